"""Bounded reads of regular files: the one way graphspec opens a file a user or a checkpoint names.

A path in a spec, a checkpoint folder or on the command line may name a FIFO (opening it blocks until
a writer comes), a device (/dev/zero never ends), a directory, or a file far larger than anything we
read. Each is refused before a byte is read: the file is opened without blocking, checked with
fstat, and read up to a limit. Refusals are OSErrors carrying the path and a reason (`strerror`), so
a caller that already reports an OSError as its own error type (SpecError, ConfigError,
CheckpointError) reports these the same way. Pure Python: the compiler uses it too.
"""
from __future__ import annotations

import errno
import io
import os
import stat

JSON_LIMIT = 100_000_000   # config.json, index files, manifests: far above any real one


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike) -> io.BufferedReader:
    """Open `path` for binary reading if it is a regular file (after following symlinks).

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; it has no effect
    on regular files, so it is cleared again for the reads that follow.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
            raise OSError(code, f"{_kind(mode)}, not a regular file", os.fspath(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of regular file `path`; an OSError (EFBIG) if it holds more than `limit` bytes.

    The size is checked before reading and the read stops at limit + 1 bytes, so a file that grows
    while being read (or a /proc file that reports size 0) is refused too, never read whole.
    """
    with open_regular(path) as f:
        too_large = OSError(errno.EFBIG, f"larger than {limit} bytes, the limit for this file", os.fspath(path))
        if os.fstat(f.fileno()).st_size > limit:
            raise too_large
        data = f.read(limit + 1)
    if len(data) > limit:
        raise too_large
    return data


def read_json_object(path: str | os.PathLike, error: type[Exception], limit: int = JSON_LIMIT) -> dict:
    """The JSON object in regular file `path`, read through read_regular. Anything else is `error`
    naming the file and what is wrong: not UTF-8, not JSON, NaN or an infinite number (1e999), nesting
    deeper than Python's parser recurses, a top level that is not an object. A missing file stays a
    FileNotFoundError (the caller says what it was looking for)."""
    import json
    import math

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {text} is out of range (not a finite float)")
        return value

    def constant(name: str):
        raise ValueError(f"'{name}' is not valid JSON")

    try:
        raw = read_regular(path, limit)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise error(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 (byte offset {err.start})") from None
    try:
        data = json.loads(text, parse_constant=constant, parse_float=finite)
    except json.JSONDecodeError as err:
        raise error(f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}") from None
    except ValueError as err:
        raise error(f"{path}: {err}") from None
    except RecursionError:
        raise error(f"{path}: nested too deeply to read") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data
