"""The C paths of the few rows of a decode step (runtime/csrc/rows.c): rms_norm, rope and silu, where
torch's dispatch of one to nine aten ops costs more than their arithmetic, the attention step with its
KV cache, the greedy argmax; and the linear of fp32 or bf16 weights (runtime/csrc/matmul.c), a
matrix-vector product that streams the weights at the memory's speed on every thread (MKL's runs on
one thread). Each function returns None when its case is not one the C code takes (other dtypes,
strides, autograd, tracing, many rows, no C compiler); the caller then runs its torch code, which
computes the same numbers (to the bit for rope and argmax, up to rounding and summation order for
the others: both paths of a step are taken alike by its eager and replayed runs,
runtime/step_capture.py)."""
from __future__ import annotations

import torch

from runtime.context import tracing
from runtime.native import FLOAT_KERNEL_SUFFIX, Position, available, call, float_kernel, library

# Beyond this many elements the aten ops' own cost dominates their dispatch (and they use every thread).
MAX_ELEMENTS = 1 << 16
# Up to how many rows the C linear (weights read once per tile of rows: 8-row tiles on AVX-512) is
# taken, per dtype.
# bf16: up to 32 it beats upcasting the weight for an fp32 GEMM (4096 x 768, 32 rows: 2.2-2.6 against
# 3.1-3.5 ms; a 32-token prompt through tools.bench's model ~100 against ~110 ms), at 64 the GEMM is
# ahead (4.2 against 4.6); at one row it beats torch's bf16 matrix-vector product, which converts
# slowly (a decode step: 29 against 33 ms).
# fp32: one row ties torch's threaded product (linear_layers' split GEMM) alone, 2-8 rows are 1.1-2.4x
# faster; since blocks of 8 rows take the wide tiles (matmul.c WIDE_BLOCKS), 9-16 rows are 1.04-1.5x
# faster than MKL's GEMM (best of 5, widths 512-2048), from 24 rows MKL's is ahead (0.6-0.9x). In a
# replayed decode step the C call joins the step's program (runtime/csrc/program.c) where torch's is
# an aten call of its own: 20.7 -> 19.3 ms a step of tools.bench's model (alternated in one process).
LINEAR_ROWS = {torch.bfloat16: 32, torch.float32: 16}


FLOATS = tuple(FLOAT_KERNEL_SUFFIX)


def _takes(*tensors: torch.Tensor, dtypes=FLOATS) -> bool:
    """All on the CPU, of one dtype the kernels have, none needing autograd, and not traced.
    (Asked several times per layer and decode step: plain loops, the cheapest checks first.)"""
    dtype = tensors[0].dtype
    if dtype not in dtypes or tracing() or not available():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t.dtype != dtype or not t.is_cpu or (grad and t.requires_grad):
            return False
    return True


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           rows_up_to: dict[torch.dtype, int] = LINEAR_ROWS) -> torch.Tensor | None:
    """F.linear for up to rows_up_to[dtype] rows (fp32; bf16: fp32 accumulation, bias added in fp32,
    one rounding at the end, as torch's bf16 linear)."""
    k = x.shape[-1]
    if (k == 0 or x.numel() > rows_up_to.get(x.dtype, 0) * k or not weight.is_contiguous() or x.stride(-1) != 1
            or weight.dim() != 2 or weight.shape[1] != k):       # F.linear names a mismatch
        return None
    operands = (x, weight) if bias is None else (x, weight, bias)
    if not _takes(*operands, dtypes=tuple(rows_up_to)) or (bias is not None and not bias.is_contiguous()):
        return None
    n = weight.shape[0]
    rows = x.numel() // k
    x2 = x.reshape(rows, k)
    y = torch.empty(x.shape[:-1] + (n,), dtype=x.dtype)
    threads = torch.get_num_threads()
    if x.dtype == torch.bfloat16:
        status = call(library().gs_bf16_linear, x2, rows, k, x2.stride(0), weight, bias, n, y, threads)
    else:
        status = call(library().gs_f32_mm, x2, rows, k, x2.stride(0), weight, n, y, n, threads)
        if bias is not None:
            y += bias
    if status:
        raise MemoryError(f"linear: no memory for a {rows} x {k} work buffer")
    return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """norms.rms_norm without an offset: x * rsqrt(mean(x^2, -1) + eps), rounded to x's dtype, times
    weight [x.shape[-1]]."""
    if x.numel() > MAX_ELEMENTS or not x.is_contiguous() or not weight.is_contiguous() or not _takes(x, weight):
        return None
    dim = x.shape[-1]
    if dim == 0 or weight.shape != (dim,):
        return None
    out = torch.empty_like(x)
    call(float_kernel("rms_norm", x.dtype), x, x.numel() // dim, dim, weight, eps, out)
    return out


def silu(x: torch.Tensor) -> torch.Tensor | None:
    """x / (1 + exp(-x)) elementwise, torch's formula with another exp (rows.c gs_silu_*: within a few
    ulp of F.silu; bf16 widened and the result rounded once, as torch's)."""
    if x.numel() > MAX_ELEMENTS or not x.is_contiguous() or not _takes(x):
        return None
    out = torch.empty(x.shape, dtype=x.dtype)
    call(float_kernel("silu", x.dtype), x, out, x.numel())
    return out


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor | None:
    """rotary.rope's half layout: x [B, H, S, D] (any strides, unit along D), cos / sin [B or 1, S, R],
    R even and <= D."""
    if x.dim() != 4 or x.numel() > MAX_ELEMENTS or x.stride(-1) != 1 or not _takes(x, cos, sin):
        return None
    b, h, s, d = x.shape
    r = cos.shape[-1]
    if (cos.dim() != 3 or cos.shape != sin.shape or cos.shape[1] != s or cos.shape[0] not in (1, b) or r % 2
            or r > d or not cos.is_contiguous() or not sin.is_contiguous()):
        return None
    out = torch.empty(b, h, s, d, dtype=x.dtype)
    call(float_kernel("rope", x.dtype), x, b, h, s, d, x.stride(0), x.stride(1), x.stride(2), cos, sin, r,
         0 if cos.shape[0] == 1 else s * r, out)
    return out


def attention_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor],
                   past: int, mask, scale: float, window: int | None = None,
                   softcap: float | None = None, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """A decode step of attention.attention with its KV cache: k and v (one position) written at `past`
    of the cache buffers, then q [B, H, 1, D] attends to the past + 1 cached positions under `mask`
    (None, or bool [B or 1, 1, 1, past + 1]) and, with a `window`, to the last `window` of them only;
    `softcap` caps the scores (softcap * tanh(score / softcap)), then `bias` ([H, 1, K] or [B or 1, H,
    1, K], K >= past + 1, any strides: its first past + 1 keys) is added. Returns [B, H, 1, D] (a view
    of [B, 1, H, D])."""
    kc, vc = cache
    if not _takes(q, k, v, kc, vc) or q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        return None
    if (window is not None and window < 1) or (softcap and not softcap > 0):
        return None
    b, h, _, d = q.shape
    hkv, length = k.shape[1], past + 1
    if (h % hkv or k.shape != (b, hkv, 1, d) or v.shape != k.shape or kc.shape != (b, hkv, kc.shape[2], d)
            or vc.shape != kc.shape or not kc.is_contiguous() or not vc.is_contiguous()):
        return None
    mask_stride = 0
    if mask is not None:
        if (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 4
                or mask.shape[1:] != (1, 1, length) or mask.shape[0] not in (1, b) or mask.stride(-1) != 1):
            return None
        mask_stride = mask.stride(0) if mask.shape[0] > 1 else 0
    bias_strides = (0, 0, 0)
    if bias is not None:
        if bias.dim() == 3:
            bias = bias[None]
        if (bias.dim() != 4 or bias.dtype != q.dtype or not bias.is_cpu or bias.shape[0] not in (1, b)
                or bias.shape[1] != h or bias.shape[2] != 1 or bias.shape[3] < length
                or (torch.is_grad_enabled() and bias.requires_grad)):
            return None
        bias_strides = (bias.stride(0) if bias.shape[0] > 1 else 0, bias.stride(1), bias.stride(3))
    out = torch.empty(b, 1, h, d, dtype=q.dtype)
    # per head: its scores, then its fp32 output; sized for the whole cache, so that every step of a
    # generation allocates the same (a recorded step replays into it at later positions)
    scores = torch.empty(b * h * (kc.shape[2] + d))
    call(float_kernel("attend_step", q.dtype), q, q.stride(0), q.stride(1), k, k.stride(0), k.stride(1), v, v.stride(0),
         v.stride(1), kc, vc, kc.shape[2], Position(past), b, h, hkv, d, mask, mask_stride, scale, window or 0,
         softcap or 0.0, bias, *bias_strides, out, scores, torch.get_num_threads())
    return out.transpose(1, 2)


# The router ops' C loops (one thread) beat aten's call up to about this many values; torch's
# vectorised, threaded ops are ahead beyond (a softmax of 64 x 1024: 0.13 against 0.04 ms).
FEW_VALUES = 1 << 12


def _rows_of(x: torch.Tensor, dim: int):
    """dim made positive, or None: x is not a small contiguous fp32 CPU tensor the few-value kernels
    take."""
    if x.dim() == 0 or x.numel() > FEW_VALUES or not x.is_contiguous() or not _takes(x, dtypes=(torch.float32,)):
        return None
    return dim % x.dim()


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor | None:
    """torch.softmax(x, dim) along the last dim of a small fp32 tensor (rows.c gs_softmax_f32: within
    a few ulp of torch's)."""
    dim = _rows_of(x, dim)
    if dim is None or dim != x.dim() - 1:
        return None
    out = torch.empty(x.shape, dtype=x.dtype)
    n = x.shape[-1]
    call(library().gs_softmax_f32, x, out, x.numel() // n if n else 0, n)
    return out


def topk(x: torch.Tensor, k: int, dim: int, largest: bool, sorted: bool):
    """torch.topk(x, k, dim, largest=True) along the last dim of a small fp32 tensor: (values,
    indices), largest first (rows.c gs_topk_f32: the same values; among equal ones the lower index
    first, an order torch leaves open), or None."""
    dim = _rows_of(x, dim)
    n = x.shape[-1] if x.dim() else 0
    if dim is None or dim != x.dim() - 1 or not largest or not isinstance(k, int) or not 0 < k <= n:
        return None
    values = torch.empty(*x.shape[:-1], k, dtype=x.dtype)
    indices = torch.empty(*x.shape[:-1], k, dtype=torch.long)
    call(library().gs_topk_f32, x, x.numel() // n, n, k, values, indices)
    return values, indices


def reduce_sum(x: torch.Tensor, dim: int, keepdim: bool) -> torch.Tensor | None:
    """x.sum(dim, keepdim) of a small fp32 tensor, summed in order along dim (rows.c gs_sum_f32)."""
    dim = _rows_of(x, dim)
    if dim is None:
        return None
    shape = list(x.shape)
    n = shape[dim]
    outer, inner = x.shape[:dim].numel(), x.shape[dim + 1:].numel()
    shape[dim] = 1
    out = torch.empty(shape if keepdim else shape[:dim] + shape[dim + 1:], dtype=x.dtype)
    call(library().gs_sum_f32, x, out, outer, n, inner)
    return out


def argmax(x: torch.Tensor) -> torch.Tensor | None:
    """x.argmax(dim=-1) for contiguous fp32 rows [N, V] (the first largest value, the first NaN if
    any: torch's answer) by one C loop (rows.c gs_argmax_f32)."""
    if (x.dim() != 2 or not x.shape[1] or x.dtype != torch.float32 or not x.is_contiguous() or not x.is_cpu
            or tracing() or not available()):
        return None
    out = torch.empty(x.shape[0], dtype=torch.long)
    call(library().gs_argmax_f32, x, x.shape[0], x.shape[1], out)
    return out
