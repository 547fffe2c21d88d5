"""Small tensor ops the emitted code calls by name: joining with broadcasting, soft-capping, dropout, silu,
softmax, top-k and sums."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime.ops import native_rows


def concat(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """torch.cat that broadcasts the other dims first (a class token [1, 1, D] before [B, N, D])."""
    dim = dim % a.dim()
    shape = [max(x, y) if i != dim else -1 for i, (x, y) in enumerate(zip(a.shape, b.shape))]
    return torch.cat((a.expand(*shape[:dim], a.shape[dim], *shape[dim + 1:]),
                      b.expand(*shape[:dim], b.shape[dim], *shape[dim + 1:])), dim=dim)


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    # null means no capping: configs switch it off with null (a final logit soft-capping set to null).
    if cap is None:
        return x
    return torch.tanh(x / cap) * cap


def dropout(x: torch.Tensor, ctx, p: float | None) -> torch.Tensor:
    """F.dropout while the model trains (ctx.training); x itself, untouched, in evaluation or when p is 0 or null."""
    if not p or not ctx.training:
        return x
    return F.dropout(x, p, training=True)


def silu(x: torch.Tensor) -> torch.Tensor:
    """F.silu; the few rows of a decode step by one C loop (native_rows.silu, within a few ulp of
    torch's), where aten's call costs ~10x the arithmetic."""
    few = native_rows.silu(x)
    return few if few is not None else F.silu(x)


# A mixture of experts' router runs these once a layer on a few dozen values per token: by C loops
# (native_rows) where aten's call costs ~25 us, and which a replayed decode step runs inside its
# program; torch's ops elsewhere (other dtypes, large tensors, autograd, tracing).

def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    few = native_rows.softmax(x, dim)
    return few if few is not None else torch.softmax(x, dim)


def topk(x: torch.Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True):
    few = native_rows.topk(x, k, dim, largest, sorted)
    return few if few is not None else torch.topk(x, k, dim=dim, largest=largest, sorted=sorted)


def reduce_sum(x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    few = native_rows.reduce_sum(x, dim, keepdim)
    return few if few is not None else x.sum(dim, keepdim=keepdim)
