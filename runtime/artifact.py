"""Reading an artifact directory: its manifest (every file's sha256), and importing its Python files.

Pure Python: the compiler reads manifests through this module too (its cache check) without torch.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 2      # 2: interface.json carries what the runtime reads (runtime/interface.py)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(directory: Path) -> dict | None:
    try:
        return json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_complete(directory: Path, key: str | None = None) -> bool:
    """The directory holds an artifact whose files match its manifest (and `key`, if given)."""
    manifest = read_manifest(directory)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or (key is not None and manifest.get("key") != key):
        return False
    try:
        return all(file_sha256(Path(directory) / name) == digest for name, digest in manifest["files"].items())
    except (OSError, KeyError, TypeError, AttributeError):
        return False


def import_file(name: str, path: Path):
    """Import an artifact's Python file as module `name` (once per process); a failed import leaves
    nothing half-registered in sys.modules."""
    import importlib.util
    import sys
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module
