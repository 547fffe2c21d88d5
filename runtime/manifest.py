"""An artifact's manifest.json: what the compiler wrote, checked before anything in the directory is used.

The manifest lists a sha256 for every file of the artifact and one for its own content
(`manifest_sha256`), so an edited, truncated or half-written directory, a manifest included, is seen
as incomplete and compiled again rather than half-trusted. File names are plain names inside the
directory (no path separators): a manifest never makes us read anything outside it. Every file is
read as a bounded regular file. Pure Python: the compiler (writing) and the runtime (loading) share it.

Readers that read several files of an artifact hold `reading(directory)`, a shared lock on the lock
file the compiler holds exclusively while it swaps a new artifact in, so they never see two versions.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from pathlib import Path

from runtime.errors import ArtifactError
from runtime.files import JSON_LIMIT, read_regular

MANIFEST = "manifest.json"
FORMAT = 2      # 2: interface.json carries what the runtime reads (runtime/interface.py)
FILE_LIMIT = 256 * 2**20        # model.py, kernels.py, spec.json, ...: far above any real one
PYCACHE = "__pycache__"         # written by Python next to model.py when the runtime imports it
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def content_sha256(manifest: dict) -> str:
    """The hash a manifest records of itself: its content without that field, canonically encoded."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def lock_path(directory: Path) -> Path:
    """The lock file of an artifact directory: a sibling, so that it outlives every swap."""
    directory = Path(os.path.abspath(directory))
    return directory.parent / f".{directory.name}.lock"


def _plain(name) -> bool:
    return isinstance(name, str) and _PLAIN_NAME.fullmatch(name) is not None and name != MANIFEST


def _load(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    try:
        text = read_regular(path, JSON_LIMIT).decode("utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{directory}: no {MANIFEST}: not a graphspec artifact "
                            "(graphspec compile SPEC -o DIR writes one)") from None
    except OSError as err:
        raise ArtifactError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{path}: not UTF-8 (byte offset {err.start})") from None
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ArtifactError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got a JSON {type(manifest).__name__}")
    return manifest


def _check_files(manifest: dict, path: Path) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{path}: 'files' must map file names to sha256 digests")
    for name, digest in files.items():
        if not _plain(name):
            raise ArtifactError(f"{path}: files: {name!r} is not a plain file name inside the artifact")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ArtifactError(f"{path}: files.{name}: {digest!r} is not a sha256 digest")


def written_by_graphspec(directory: Path) -> dict:
    """The manifest of a directory graphspec wrote, in any format version; ArtifactError otherwise.
    This decides whether a compile may replace the directory, so it asks for nothing that changes
    between versions: a graphspec version, a key, and the list of the files written."""
    manifest = _load(directory)
    path = Path(directory) / MANIFEST
    versions = manifest.get("versions")
    if not isinstance(versions, dict) or not isinstance(versions.get("graphspec"), str) \
            or not isinstance(manifest.get("key"), str):
        raise ArtifactError(f"{path}: not a graphspec manifest (no 'key' and 'versions.graphspec')")
    _check_files(manifest, path)
    return manifest


def read_manifest(directory: Path) -> dict:
    """The validated manifest of a complete-looking artifact of this format; ArtifactError naming
    the file and the field otherwise."""
    manifest = written_by_graphspec(directory)
    path = Path(directory) / MANIFEST
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: format {manifest.get('format')!r}; this graphspec reads format {FORMAT}: "
                            "compile again")
    if manifest.get("manifest_sha256") != content_sha256(manifest):
        raise ArtifactError(f"{path}: its content does not match its manifest_sha256 (edited or damaged): "
                            "compile again")
    for field in ("name", "key"):
        if not isinstance(manifest.get(field), str) or not manifest[field]:
            raise ArtifactError(f"{path}: '{field}' must be a non-empty string")
    return manifest


def file_sha256(path: Path) -> str:
    return hashlib.sha256(read_regular(path, FILE_LIMIT)).hexdigest()


def files_match(directory: Path, manifest: dict) -> bool:
    """Every file the manifest lists is there, a regular file, with the recorded hash."""
    try:
        return all(file_sha256(Path(directory) / name) == digest for name, digest in manifest["files"].items())
    except OSError:
        return False


def is_complete(directory: Path, key: str | None = None) -> bool:
    """The directory holds an artifact of this format whose files match its manifest (and `key`)."""
    with reading(directory):
        return complete_while_locked(directory, key)


def complete_while_locked(directory: Path, key: str | None = None) -> bool:
    """is_complete for the one who holds the artifact's lock already (the compile swapping it)."""
    try:
        manifest = read_manifest(directory)
    except ArtifactError:
        return False
    return (key is None or manifest["key"] == key) and files_match(directory, manifest)


@contextlib.contextmanager
def reading(directory: Path):
    """Hold the artifact still: a compile waits to swap in a new version until the block ends.
    Never creates the lock file (an artifact may lie in a read-only place): without one, no compile
    has written there, so there is nothing to wait for."""
    try:
        fd = os.open(lock_path(directory), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
