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

# The reading side (manifest, hashes) is the runtime's; the compiler's cache check uses it too.
from runtime.artifact import FORMAT, MANIFEST, is_complete, read_manifest

__all__ = ["MANIFEST", "FORMAT", "is_complete", "read_manifest", "write_artifact"]


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


