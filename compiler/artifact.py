"""Artifact directories: written atomically, keyed by everything that went into them.

A compile writes into a fresh temporary sibling directory and swaps it in under a lock, so a crash
leaves either the old artifact or the complete new one, and two processes compiling the same spec
both succeed with one complete artifact. The manifest records a sha256 of every file; the runtime
refuses a directory whose files do not match it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_complete(directory: Path, key: str | None = None) -> bool:
    """The directory holds an artifact whose files match its manifest (and `key`, if given)."""
    manifest = read_manifest(directory)
    if not manifest or manifest.get("format") != FORMAT or (key is not None and manifest.get("key") != key):
        return False
    try:
        return all(file_sha256(directory / name) == digest for name, digest in manifest["files"].items())
    except (OSError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def _locked(target: Path):
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_artifact(target: Path, files: dict[str, str], manifest: dict) -> None:
    """Write `files` and the manifest to `target`, replacing what was there only once complete."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        digests = {}
        for name, text in files.items():
            (tmp / name).write_text(text)
            digests[name] = hashlib.sha256(text.encode()).hexdigest()
        (tmp / MANIFEST).write_text(json.dumps({**manifest, "format": FORMAT, "files": digests}, indent=2) + "\n")
        with _locked(target):
            if is_complete(target, manifest["key"]):
                return   # another process finished the same compile first
            old = None
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                os.rmdir(old)
                os.rename(target, old)
            os.rename(tmp, target)
            tmp = None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


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
