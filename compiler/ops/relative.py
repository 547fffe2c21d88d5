"""Relative position buckets (T5): query/key distances binned, exactly for near and logarithmically
for far ones; an embedding of the buckets gives a per-head bias added to the attention scores
(run time: runtime/ops/sequence.py)."""
from __future__ import annotations

from .registry import Attr, OpDef, TType, register


def _buckets_infer(ctx) -> list[TType]:
    x = ctx["x"]
    s = x.shape[1]
    return [TType((s, s), "int")]


register(OpDef(
    name="relative_buckets", doc="int [S, S]: T5 relative-position buckets of each query/key pair of x [B, S, ...]",
    operands=("x",), context=True, fusion="opaque", run="relative_buckets", sequence=("x", 1),
    attrs=(Attr("bidirectional", "expr", required=True), Attr("num_buckets", "expr", required=True),
           Attr("max_distance", "expr", required=True)),
    infer=_buckets_infer,
    emit=lambda e: (f"ops.relative_buckets({e['x']}, ctx, {e.a('bidirectional')}, {e.a('num_buckets')}, "
                    f"{', '.join([e.a('max_distance'), *e.seq_arg()])})"),
    shape_doc=("int [S, S] for x [B, S, ...] (queries by keys, the cached ones included; at a decode step "
               "the keys run over the whole KV cache, which attention's bias may: it reads the keys so far)"),
    example="buckets: {op: relative_buckets, x: h, bidirectional: true, num_buckets: num_buckets, max_distance: max_distance}"))
