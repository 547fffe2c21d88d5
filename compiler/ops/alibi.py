"""ALiBi: one slope per attention head, for a bias that grows linearly with key distance (run time:
runtime/ops/alibi.py)."""
from __future__ import annotations

from .registry import Attr, OpDef, TType, register

register(OpDef(
    name="alibi_slopes", doc="the ALiBi slope of each head, fp32, exactly as Transformers' build_alibi_tensor: "
                             "powers of 2 ** (-8 / n) for the closest power of two n <= heads, then the interleaved "
                             "slopes of 2n for the heads beyond it",
    operands=(), attrs=(Attr("heads", "expr", required=True),), context=True, run="alibi_slopes", fusion="opaque",
    infer=lambda ctx: [TType((ctx.attr("heads"),), "fp32")],
    emit=lambda e: f"ops.alibi_slopes(ctx, {e.a('heads')})",
    shape_doc="fp32 [heads]", example="slopes: {op: alibi_slopes, heads: num_heads}"))
