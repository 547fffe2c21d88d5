"""Normalisations over the last dimension."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime.ops import native_rows


def _aligned(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """A weight of several dims viewed to scale x's `dims` (negative, from the end) and broadcast
    over the others: [heads, head_dim] for dims (-3, -1) is [heads, 1, head_dim]."""
    shape = [1] * -dims[0]
    for d, size in zip(dims, t.shape):
        shape[d] = size
    return t.view(shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0,
             dims: tuple[int, ...] | None = None) -> torch.Tensor:
    if dims is not None:
        weight = _aligned(weight, dims)
    if not offset and weight.dim() == 1:
        few = native_rows.rms_norm(x, weight, eps)
        if few is not None:
            return few
    if x.dtype == torch.float32 and not offset and weight.dim() == 1:
        # one aten op instead of seven, same arithmetic (rsqrt of the mean square, then the weight)
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    # Statistics in fp32 whatever the input dtype, as every reference implementation does.
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if offset:
        # (offset + w) is applied in fp32 before the cast back, the order of the references that
        # store the weight as an offset from one.
        return (h * (offset + weight.float())).to(x.dtype)
    # Without an offset the references cast back first, then scale, so bf16 results round like them.
    return weight * h.to(x.dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float,
               dims: tuple[int, ...] | None = None) -> torch.Tensor:
    if dims is None:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    y = F.layer_norm(x, (x.shape[-1],), None, None, eps) * _aligned(weight, dims)
    return y if bias is None else y + _aligned(bias, dims)
