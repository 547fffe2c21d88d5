"""Artifact directories: written whole, swapped in atomically, never replacing what is not ours.

A compile writes into a fresh sibling directory `.NAME.tmp-XXXXXXXX` and, under an exclusive lock on
`.NAME.lock`, exchanges it with NAME in one step (renameat2 with RENAME_EXCHANGE), then deletes the
old version, now under the temporary name. At every instant NAME is one complete artifact, the old or
the new: for a process killed at any point and for a reader, who holds the same lock shared while it
reads (runtime.manifest.reading). Two processes compiling the same spec both succeed with one
artifact; the second finds the first's complete and drops its own.

Why an exchange rather than a versioned directory behind a symlink that is replaced atomically: the
exchange keeps NAME a plain directory, as users, scripts, `cp -r` and earlier artifacts know it; an
existing directory cannot be turned into a symlink atomically at all; and nothing accumulates. Both
are cheap: measured here (ext4, `python -m tools.bench --artifact-swap`), an exchange takes ~20 us, a
symlink replacement ~100 us, a whole llama artifact write ~7 ms. The cost is Linux (3.15+) and a
filesystem that supports the flag (ext4, xfs, btrfs, tmpfs, overlayfs); elsewhere (NFS, some FUSE
mounts, other kernels) the swap falls back to two renames, and a kill between them leaves NAME missing
with the old version in `.NAME.old-XXXXXXXX`, which the next compile puts back before anything else.

Killed compiles leave `.NAME.tmp-*` (and in the fallback `.NAME.old-*`) behind. Each compile holds an
exclusive lock on its temporary directory while it lives, so the next compile (cache hits included)
deletes exactly the ones no live process holds, and never another compile's work in progress.

A compile replaces NAME only if it is absent, an empty directory, or an artifact graphspec wrote
holding nothing but the files its manifest lists: anything else is the user's and is an
ArtifactError, left as it is. Files are not fsynced: after a power loss a damaged artifact fails its
manifest's hashes, so it is compiled again rather than loaded.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from functools import lru_cache
from pathlib import Path

from runtime.errors import ArtifactError
from runtime.manifest import (  # noqa: F401 - FORMAT, MANIFEST, is_complete, read_manifest: for the pipeline and loader
    FORMAT,
    MANIFEST,
    PYCACHE,
    complete_while_locked,
    content_sha256,
    is_complete,
    lock_path,
    read_manifest,
    written_by_graphspec,
)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_SUFFIX = re.compile(r"[a-z0-9_]{8}")    # what tempfile.mkdtemp puts after the prefix


def check_target(target: Path) -> None:
    """Refuse, with an ArtifactError saying why, a target a compile must not replace."""
    target = Path(os.path.abspath(target))
    if not target.name:
        raise ArtifactError(f"{target}: not a directory an artifact can be written to")
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    advice = "graphspec replaces only its own artifacts: choose another output or remove it yourself"
    if stat.S_ISLNK(mode):
        raise ArtifactError(f"{target}: is a symbolic link; artifacts are written only to real directories "
                            f"(give the directory it points to); {advice}")
    if not stat.S_ISDIR(mode):
        raise ArtifactError(f"{target}: exists and is not a directory; {advice}")
    entries = os.listdir(target)
    if not entries:
        return
    try:
        manifest = written_by_graphspec(target)
    except ArtifactError:
        raise ArtifactError(f"{target}: is a directory graphspec did not write (no graphspec {MANIFEST}); "
                            f"{advice}") from None
    ours = set(manifest["files"]) | {MANIFEST}
    extra = sorted(e for e in entries if e not in ours and not (e == PYCACHE and _only_bytecode(target / e)))
    if extra:
        shown = ", ".join(extra[:5]) + (f", ... ({len(extra)} entries)" if len(extra) > 5 else "")
        raise ArtifactError(f"{target}: holds files graphspec did not write ({shown}); {advice}")


def _only_bytecode(folder: Path) -> bool:
    return not folder.is_symlink() and folder.is_dir() and all(p.name.endswith(".pyc") for p in folder.iterdir())


@contextlib.contextmanager
def _locked(target: Path):
    fd = os.open(lock_path(target), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _hold(directory: Path) -> int | None:
    """An exclusive lock on a directory, held as long as the returned descriptor is open; None when
    another process holds it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _leftovers(target: Path) -> list[Path]:
    """Temporary directories of compiles of `target`, live or not (by name: ours and only ours)."""
    out = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return out
    for entry in entries:
        for kind in ("tmp", "old"):
            prefix = f".{target.name}.{kind}-"
            if entry.name.startswith(prefix) and _SUFFIX.fullmatch(entry.name[len(prefix):]) \
                    and entry.is_dir(follow_symlinks=False):
                out.append(Path(entry.path))
    return out


def clean_stale(target: Path) -> None:
    """Delete what killed compiles of `target` left behind, restoring the old artifact where a kill
    came between the two renames of the fallback swap; a live compile's directory is left alone."""
    target = Path(os.path.abspath(target))
    if not _leftovers(target):
        return
    with _locked(target):
        _clean_locked(target)


def _clean_locked(target: Path) -> None:
    for leftover in _leftovers(target):
        fd = _hold(leftover)
        if fd is None:
            continue            # a live compile's work in progress
        try:
            if leftover.name.startswith(f".{target.name}.old-") and not os.path.lexists(target):
                os.rename(leftover, target)
            else:
                shutil.rmtree(leftover, ignore_errors=True)
        finally:
            os.close(fd)


@lru_cache(maxsize=1)
def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None             # glibc before 2.28, or another libc
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where the kernel or the filesystem cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def _swap_in(tmp: Path, target: Path) -> None:
    """Put `tmp` at `target`; afterwards `tmp` names the old version, or nothing."""
    if not os.path.lexists(target):
        os.rename(tmp, target)
    elif not exchange(tmp, target):
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)      # a kill here leaves `old`, which the next compile puts back
        os.rename(tmp, target)
        os.rename(old, tmp)


def write_artifact(target: Path, files: dict[str, str], manifest: dict) -> None:
    """Write `files` and the manifest to `target`, replacing what was there only once complete."""
    target = Path(os.path.abspath(target))
    check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        _clean_locked(target)
        # created and locked under the target's lock, so no cleaner can take it for a dead one
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        hold = _hold(tmp)
    try:
        digests = {}
        for name, text in files.items():
            data = text.encode()
            (tmp / name).write_bytes(data)
            digests[name] = hashlib.sha256(data).hexdigest()
        full = {**manifest, "format": FORMAT, "files": digests}
        full["manifest_sha256"] = content_sha256(full)
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2) + "\n")
        with _locked(target):
            if complete_while_locked(target, manifest["key"]):
                return      # another process finished the same compile first
            check_target(target)    # again: it may have changed while this compile ran
            _swap_in(tmp, target)
            shutil.rmtree(tmp, ignore_errors=True)     # the old version, under the lock readers share
            tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        os.close(hold)


