"""Reading an artifact directory: the manifest (every file's sha256, the versions that wrote it),
interface.json (runtime/interface.py) and model.py. This is all the runtime reads of a compiled model.

Importing this module costs no torch: the compiler reads manifests through it too (its cache check).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from runtime.errors import ArtifactError
from runtime.interface import Interface, read_interface

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


@dataclass
class Artifact:
    directory: Path
    manifest: dict
    interface: Interface
    module: ModuleType           # model.py: Config, MODEL, HEADS


def _installed(package: str) -> str | None:
    # from the package metadata, as the compiler records it (pipeline.versions)
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def check_manifest(directory: Path) -> dict:
    """The manifest of a complete artifact written by this graphspec for the installed torch."""
    from runtime import __version__
    manifest = read_manifest(directory)
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{directory}: no readable {MANIFEST}; is this a graphspec artifact? (graphspec compile SPEC -o DIR)")
    if not is_complete(directory):
        raise ArtifactError(f"{directory}: files do not match {MANIFEST} (edited, half-written, or an older "
                            f"format than {FORMAT}); compile again")
    versions = manifest.get("versions") if isinstance(manifest.get("versions"), dict) else {}
    if versions.get("graphspec") != __version__ or versions.get("torch") != _installed("torch"):
        raise ArtifactError(f"{directory}: compiled by graphspec {versions.get('graphspec')} for torch "
                            f"{versions.get('torch')}; this is graphspec {__version__} with torch "
                            f"{_installed('torch')}: compile again")
    for key, kind in (("key", str), ("name", str)):
        if not isinstance(manifest.get(key), kind):
            raise ArtifactError(f"{directory / MANIFEST}: {key}: missing or not a {kind.__name__}")
    return manifest


def import_model(directory: Path, manifest: dict) -> ModuleType:
    """model.py of an artifact, imported once per process under a name unique to its compile key."""
    return import_file(f"graphspec_artifact_{manifest['key'][:16]}_{manifest['name']}", Path(directory) / "model.py")


def open_artifact(directory: str | Path) -> Artifact:
    """Manifest (hashes, versions), interface.json (validated) and model.py of an artifact directory."""
    directory = Path(directory)
    manifest = check_manifest(directory)
    interface = read_interface(directory)
    return Artifact(directory, manifest, interface, import_model(directory, manifest))
