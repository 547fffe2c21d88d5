"""The C paths (runtime/csrc/rows.c) of rms_norm and rope for the few rows of a decode step, where
torch's dispatch of five to nine aten ops costs more than their arithmetic. Each function returns
None when its case is not one the C code takes (other dtypes, strides, autograd, tracing, many rows,
no C compiler); the caller then runs its torch code, which computes the same numbers."""
from __future__ import annotations

import torch

from runtime.context import tracing
from runtime.native import available, library

# Beyond this many elements the aten ops' own cost dominates their dispatch (and they use every thread).
MAX_ELEMENTS = 1 << 16


def _takes(*tensors: torch.Tensor) -> bool:
    if tracing() or not available():
        return False
    grad = torch.is_grad_enabled()
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and not (grad and t.requires_grad)
               for t in tensors)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """x * rsqrt(mean(x^2, -1) + eps) * weight, weight [x.shape[-1]]."""
    if x.numel() > MAX_ELEMENTS or not x.is_contiguous() or not weight.is_contiguous() or not _takes(x, weight):
        return None
    dim = x.shape[-1]
    if dim == 0 or weight.shape != (dim,):
        return None
    out = torch.empty_like(x)
    library().gs_rms_norm(x.data_ptr(), None, x.numel() // dim, dim, weight.data_ptr(), eps, None, out.data_ptr())
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
    out = torch.empty(b, h, s, d)
    library().gs_rope(x.data_ptr(), b, h, s, d, x.stride(0), x.stride(1), x.stride(2), cos.data_ptr(), sin.data_ptr(),
                      r, 0 if cos.shape[0] == 1 else s * r, out.data_ptr())
    return out
