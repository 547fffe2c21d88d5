"""Relative position buckets (T5): query/key distances binned, exactly for near and logarithmically
for far ones; an embedding of the buckets gives a per-head bias added to the attention scores."""
from __future__ import annotations

import math

from compiler.lazy_import import LazyModule

from .registry import Attr, OpDef, TType, register

# Imported on first use, not here: the compiler reads this module and must not pay torch's import.
torch = LazyModule("torch", globals())


def relative_buckets(x: torch.Tensor, ctx, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """int [S, past + S]: the bucket of (key position - query position) for the S new queries of x
    [B, S, ...] over every key so far (ctx.past_len of them cached)."""
    past, n = ctx.past_len, x.shape[1]
    query = torch.arange(past, past + n, device=x.device)[:, None]
    key = torch.arange(past + n, device=x.device)[None, :]
    rel = key - query
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).long() * num_buckets
        rel = rel.abs()
    else:
        rel = -torch.clamp(rel, max=0)
    exact = num_buckets // 2
    far = exact + (torch.log(rel.float() / exact) / math.log(max_distance / exact) * (num_buckets - exact)).long()
    far = torch.clamp(far, max=num_buckets - 1)
    return buckets + torch.where(rel < exact, rel, far)


def _buckets_infer(ctx) -> list[TType]:
    x = ctx["x"]
    s = x.shape[1]
    return [TType((s, s), "int")]


register(OpDef(
    name="relative_buckets", doc="int [S, S]: T5 relative-position buckets of each query/key pair of x [B, S, ...]",
    operands=("x",), context=True, fusion="opaque", sequence=("x", 1),
    attrs=(Attr("bidirectional", "expr", required=True), Attr("num_buckets", "expr", required=True),
           Attr("max_distance", "expr", required=True)),
    infer=_buckets_infer,
    emit=lambda e: (f"ops.relative_buckets({e['x']}, ctx, {e.a('bidirectional')}, {e.a('num_buckets')}, "
                    f"{e.a('max_distance')})")))
