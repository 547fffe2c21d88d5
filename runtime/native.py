"""The C kernels of runtime/csrc/ (matmul.c: matrix products for a few rows, float and quantized weights;
rows.c: the small row ops of a decode step), built into one library with the system C compiler at first use and loaded with ctypes.

Built for this machine (`-march=native`), cached under the graphspec cache directory, keyed by the
sources, the compiler's version and the compiler's own view of this CPU (its predefined macros for
`-march=native`), so a cache shared between machines never hands one machine another's code.
Without a C compiler (or OpenMP) the kernels are unavailable and `library()` says why; the callers
then take torch's paths, which are slower but give the same numbers.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from runtime.cache import cache_root

SOURCES = tuple(Path(__file__).with_name("csrc") / name for name in ("matmul.c", "rows.c", "program.c"))
HEADERS = tuple(Path(__file__).with_name("csrc") / name for name in ("bf16.h", "kernels.h"))
FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
ABI_VERSION = 18
# The instruction set the kernels are built for: this machine's by default. Another value (the
# environment's GRAPHSPEC_NATIVE_MARCH, e.g. x86-64-v3 for AVX2 only, x86-64 for none) builds the
# kernels' other code paths, which is how the tests prove them on a machine that would not pick them.
MARCH_VARIABLE = "GRAPHSPEC_NATIVE_MARCH"

_p, _i, _f, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
# name -> (argument types, result type)
SIGNATURES = {
    "gs_f32_mm": ([_p, _i, _i, _i, _p, _i, _p, _i, _int], _int),
    "gs_q8_mm": ([_p, _i, _i, _i, _p, _p, _i, _p, _i, _int], _int),
    "gs_q4_mm": ([_p, _i, _i, _i, _p, _p, _p, _i, _i, _p, _i, _int], _int),
    "gs_q8a8_mm": ([_p, _i, _i, _i, _p, _p, _i, _p, _i, _int], _int),
    "gs_q4a8_mm": ([_p, _i, _i, _i, _p, _p, _p, _i, _i, _p, _i, _int], _int),
    "gs_a8_interleaved": ([], _int),
    "gs_q4_repack16": ([_p, _p, _p, _i, _i, _i, _p, _p, _p], None),
    "gs_q4a8_mm16": ([_p, _i, _i, _i, _p, _p, _p, _i, _i, _p, _i, _int], _int),
    "gs_q4_mm16": ([_p, _i, _i, _i, _p, _p, _p, _i, _i, _p, _i, _int], _int),
    "gs_q8_repack16": ([_p, _i, _i, _p], None),
    "gs_q8_mm16": ([_p, _i, _i, _i, _p, _p, _i, _p, _i, _int], _int),
    "gs_q8a8_mm16": ([_p, _i, _i, _i, _p, _p, _i, _p, _i, _int], _int),
    "gs_q8_dequant": ([_p, _p, _i, _i, _p, _int], None),
    "gs_q4_dequant": ([_p, _p, _p, _i, _i, _i, _p, _int], None),
    "gs_bf16_linear": ([_p, _i, _i, _i, _p, _p, _i, _p, _int], _int),
    "gs_rms_norm_f32": ([_p, _i, _i, _p, _f, _p], None),
    "gs_rms_norm_bf16": ([_p, _i, _i, _p, _f, _p], None),
    "gs_rope_f32": ([_p, _i, _i, _i, _i, _i, _i, _i, _p, _p, _i, _i, _p], None),
    "gs_rope_bf16": ([_p, _i, _i, _i, _i, _i, _i, _i, _p, _p, _i, _i, _p], None),
    "gs_attend_step_f32": ([_p, _i, _i, _p, _i, _i, _p, _i, _i, _p, _p, _i, _i, _i, _i, _i, _i, _p, _i, _f, _i, _f,
                            _p, _i, _i, _i, _p, _p, _int], None),
    "gs_attend_step_bf16": ([_p, _i, _i, _p, _i, _i, _p, _i, _i, _p, _p, _i, _i, _i, _i, _i, _i, _p, _i, _f, _i, _f,
                             _p, _i, _i, _i, _p, _p, _int], None),
    "gs_silu_f32": ([_p, _p, _i], None),
    "gs_silu_bf16": ([_p, _p, _i], None),
    "gs_gather_rows": ([_p, _i, _i, _p, _i, _p], _int),
    "gs_argmax_f32": ([_p, _i, _i, _p], None),
    "gs_softmax_f32": ([_p, _p, _i, _i], None),
    "gs_topk_f32": ([_p, _i, _i, _i, _p, _p], None),
    "gs_sum_f32": ([_p, _p, _i, _i, _i], None),
    "gs_positions": ([_p, _i, _i], None),
    "gs_i64_to_f32": ([_p, _p, _i], None),
    "gs_zero_bytes": ([_p, _i], None),
    "gs_program_kernel": ([ctypes.c_char_p, _i], _i),
    "gs_program_run": ([_p, _i, _i, _p], _i),
    "gs_grouped": ([_p, _p, _p, _i, _i, _i, _i, _p, _p, _p], _int),
    "gs_binary_broadcast_f32": ([_p, _p, _p, _int] + [_i] * 12, None),
    "gs_binary_broadcast_bf16": ([_p, _p, _p, _int] + [_i] * 12, None),
    "gs_concat2": ([_p, _i, _p, _i, _i, _p], None),
    "gs_binary_f32": ([_p, _p, _p, _i, _int], None),
    "gs_binary_bf16": ([_p, _p, _p, _i, _int], None),
}


class Unavailable(RuntimeError):
    """The native kernels cannot be built or loaded here (the message says why)."""


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


def march() -> str:
    value = os.environ.get(MARCH_VARIABLE, "native")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}", value):
        raise Unavailable(f"{MARCH_VARIABLE}={value!r} is not a -march value (letters, digits, '-', '_', '.', '+')")
    return value


def _flags() -> list[str]:
    return [f"-march={march()}", *FLAGS]


def _build_key(cc: str) -> str:
    target = _run([cc, f"-march={march()}", "-dM", "-E", "-x", "c", os.devnull])
    version = _run([cc, "--version"])
    if target.returncode != 0:
        raise Unavailable(f"{cc} -march={march()} failed: {target.stderr.strip()[-500:]}")
    h = hashlib.sha256()
    for part in (*(s.read_bytes() for s in SOURCES + HEADERS), " ".join(_flags()).encode(), version.stdout.encode(),
                 target.stdout.encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:24]


def _build(cc: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = _run([cc, *_flags(), *map(str, SOURCES), "-o", tmp])
        if proc.returncode != 0:
            raise Unavailable(f"building {', '.join(s.name for s in SOURCES)} with {cc} failed:\n"
                              f"{proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)    # atomic: a concurrent process sees no half-written library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL:
    """The loaded kernels (built if needed); raises Unavailable with the reason."""
    cc = _compiler()
    if cc is None:
        raise Unavailable(f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH to build the CPU kernels")
    path = cache_root() / "native" / f"kernels_{_build_key(cc)}.so"
    if not path.exists():
        _build(cc, path)
    lib = ctypes.CDLL(str(path))
    if lib.gs_abi_version() != ABI_VERSION:
        raise Unavailable(f"{path}: ABI version {lib.gs_abi_version()}, expected {ABI_VERSION}")
    for name, (args, result) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


@functools.cache
def unavailable_reason() -> str | None:
    """Why the kernels cannot be used here, or None when they can (decided once per process)."""
    try:
        library()
    except Unavailable as err:
        return str(err)
    return None


def available() -> bool:
    return unavailable_reason() is None


# the kernels written once per float dtype (rows.c): gs_<name>_f32, gs_<name>_bf16
FLOAT_KERNEL_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}


def float_kernel(name: str, dtype: torch.dtype):
    """The `dtype` version of the kernel `name` (float_kernel("rms_norm", torch.bfloat16) is
    gs_rms_norm_bf16), or None for a dtype it is not written for."""
    suffix = FLOAT_KERNEL_SUFFIX.get(dtype)
    return None if suffix is None else getattr(library(), f"gs_{name}_{suffix}")


class Position(int):
    """An argument of a kernel call that is a position of the generated sequence (the KV cache's
    filled length): a recorded decode step (runtime/step_capture.py) advances it with the sequence
    when it replays the call, where every other integer argument is replayed as recorded."""


# This thread's recording of a decode step in progress (runtime/step_capture.py), if any.
_RECORDING = threading.local()


def recorder():
    return getattr(_RECORDING, "recorder", None)


def set_recorder(value) -> None:
    _RECORDING.recorder = value


def call(kernel, *args):
    """kernel(*args) with each tensor passed as its data pointer. Kernels of the decode step are
    called through here, so that a recording sees which tensors each call reads and writes."""
    current = getattr(_RECORDING, "recorder", None)
    if current is not None:
        current.native(kernel, args)
    return kernel(*[a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args])
