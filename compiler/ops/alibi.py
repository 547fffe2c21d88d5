"""ALiBi: one slope per attention head, for a bias that grows linearly with key distance (run time:
runtime/ops/alibi.py)."""
from __future__ import annotations

from .registry import Attr, OpDef, Parallel, TType, register

register(OpDef(
    name="alibi_slopes", doc="the ALiBi slope of each head, fp32, exactly as Transformers' build_alibi_tensor: "
                             "powers of 2 ** (-8 / n) for the closest power of two n <= heads, then the interleaved "
                             "slopes of 2n for the heads beyond it; `count` of them from head `first` (all by default)",
    operands=(), context=True, run="alibi_slopes", fusion="opaque",
    attrs=(Attr("heads", "expr", required=True, doc="all the heads: the slopes depend on their number"),
           Attr("first", "expr", default=0, doc="the first head whose slope is given"),
           Attr("count", "expr", default=None, doc="how many slopes, from `first` (default: heads)")),
    infer=lambda ctx: [TType((ctx.attr("count") if ctx.attr("count") is not None else ctx.attr("heads"),), "fp32")],
    emit=lambda e: f"ops.alibi_slopes(ctx, {e.a('heads')}, {e.a('first')}, {e.a('count') if e.given('count') else e.a('heads')})",
    # a rank computes the slopes of its own heads: the count and the first are its share
    parallel=Parallel(shares={0: ("count", "first")}),
    shape_doc="fp32 [count]", example="slopes: {op: alibi_slopes, heads: num_heads}"))
