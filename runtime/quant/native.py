"""The C kernels of cpu_kernels.c: built with the system C compiler at first use, loaded with ctypes.

Built for this machine (`-march=native`), cached under the graphspec cache directory, keyed by the
source, the compiler's version and the compiler's own view of this CPU (its predefined macros for
`-march=native`), so a cache shared between machines never hands one machine another's code.
Without a C compiler (or OpenMP) the kernels are unavailable and `library()` says why; the quantized
linears then use torch's paths, which are slower but give the same numbers.
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
from pathlib import Path

import torch

from runtime.cache import cache_root

SOURCE = Path(__file__).with_name("cpu_kernels.c")
FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
ABI_VERSION = 2
# The instruction set the kernels are built for: this machine's by default. Another value (the
# environment's GRAPHSPEC_NATIVE_MARCH, e.g. x86-64-v3 for AVX2 only, x86-64 for none) builds the
# kernels' other code paths, which is how the tests prove them on a machine that would not pick them.
MARCH_VARIABLE = "GRAPHSPEC_NATIVE_MARCH"


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
    for part in (SOURCE.read_bytes(), " ".join(_flags()).encode(), version.stdout.encode(), target.stdout.encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:24]


def _build(cc: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = _run([cc, *_flags(), str(SOURCE), "-o", tmp])
        if proc.returncode != 0:
            raise Unavailable(f"building {SOURCE.name} with {cc} failed:\n{proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)    # atomic: a concurrent process sees no half-written library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL:
    """The loaded kernels (built if needed); raises Unavailable with the reason."""
    cc = _compiler()
    if cc is None:
        raise Unavailable(f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH to build {SOURCE.name}")
    path = cache_root() / "native" / f"quant_kernels_{_build_key(cc)}.so"
    if not path.exists():
        _build(cc, path)
    lib = ctypes.CDLL(str(path))
    if lib.gs_abi_version() != ABI_VERSION:
        raise Unavailable(f"{path}: ABI version {lib.gs_abi_version()}, expected {ABI_VERSION}")
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.gs_q8_mm.argtypes = [p, i, i, i, p, p, i, p, i, ctypes.c_int]
    lib.gs_q8_mm.restype = ctypes.c_int
    lib.gs_q4_mm.argtypes = [p, i, i, i, p, p, p, i, i, p, i, ctypes.c_int]
    lib.gs_q4_mm.restype = ctypes.c_int
    lib.gs_q8a8_mm.argtypes = [p, i, i, i, p, p, i, p, i, ctypes.c_int]
    lib.gs_q8a8_mm.restype = ctypes.c_int
    lib.gs_q4a8_mm.argtypes = [p, i, i, i, p, p, p, i, i, p, i, ctypes.c_int]
    lib.gs_q4a8_mm.restype = ctypes.c_int
    lib.gs_q8_dequant.argtypes = [p, p, i, i, p, ctypes.c_int]
    lib.gs_q8_dequant.restype = None
    lib.gs_q4_dequant.argtypes = [p, p, p, i, i, i, p, ctypes.c_int]
    lib.gs_q4_dequant.restype = None
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


class Weights:
    """A quantized weight's kernel arguments, resolved once (the tensors must outlive it). With
    `int8_activations` the kernels quantize each activation row first (schemes.quantize_activations)."""

    def __init__(self, stored: dict[str, torch.Tensor], scheme, out_features: int, int8_activations: bool = False):
        self.lib = library()
        self.out_features = out_features
        self.stored = stored                   # keeps the tensors alive
        zeros = stored.get("zeros")
        q, s = stored["qweight"].data_ptr(), stored["scales"].data_ptr()
        if scheme.kind == "int8":
            self.kernel, self.weight_args = self.lib.gs_q8a8_mm if int8_activations else self.lib.gs_q8_mm, (q, s)
        else:
            self.kernel = self.lib.gs_q4a8_mm if int8_activations else self.lib.gs_q4_mm
            self.weight_args = (q, s, None if zeros is None else zeros.data_ptr(), scheme.group)


def matmul(x: torch.Tensor, w: Weights) -> torch.Tensor:
    """x [..., K] (any float dtype) @ dequant(w).T -> [..., N] in x's dtype; fp32 arithmetic."""
    n = w.out_features
    if x.dtype == torch.float32 and x.is_contiguous() and x.shape[-1]:
        # the decode step's case, with as few torch calls as can be: each costs a microsecond
        k = x.shape[-1]
        m = x.numel() // k
        y = torch.empty(x.shape[:-1] + (n,))
        if w.kernel(x.data_ptr(), m, k, k, *w.weight_args, n, y.data_ptr(), n, torch.get_num_threads()):
            raise MemoryError(f"quantized kernel: no memory for a {m} x {k} work buffer")
        return y
    x2 = x.reshape(-1, x.shape[-1])
    if x2.dtype != torch.float32:
        x2 = x2.float()
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, k = x2.shape
    y = torch.empty(m, n, dtype=torch.float32)
    status = w.kernel(x2.data_ptr(), m, k, x2.stride(0), *w.weight_args, n, y.data_ptr(), n, torch.get_num_threads())
    if status:
        raise MemoryError(f"quantized kernel: no memory for a {m} x {k} work buffer")
    y = y.view(*x.shape[:-1], n)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def dequantize(stored: dict[str, torch.Tensor], scheme, in_features: int) -> torch.Tensor:
    """The fp32 weight [N, K], exactly `schemes.dequantize`, on all threads."""
    lib = library()
    q = stored["qweight"]
    n = q.shape[0]
    out = torch.empty(n, in_features, dtype=torch.float32)
    threads = torch.get_num_threads()
    if scheme.kind == "int8":
        lib.gs_q8_dequant(q.data_ptr(), stored["scales"].data_ptr(), n, in_features, out.data_ptr(), threads)
    else:
        zeros = stored.get("zeros")
        lib.gs_q4_dequant(q.data_ptr(), stored["scales"].data_ptr(), None if zeros is None else zeros.data_ptr(),
                          scheme.group, n, in_features, out.data_ptr(), threads)
    return out
