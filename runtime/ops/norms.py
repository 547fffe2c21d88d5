"""Normalisations over the last dimension."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0) -> torch.Tensor:
    if x.dtype == torch.float32 and not offset:
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


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
