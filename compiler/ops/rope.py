"""Rotary position embeddings: the cos/sin table and its application to q or k (run time:
runtime/ops/rotary.py)."""
from __future__ import annotations

from .registry import Attr, OpDef, Parallel, ShapeError, TType, register


def _table_emit(e) -> str:
    args = [e["pos"], "ctx", e.a("dim"), e.a("theta"), e.a("scaling")]
    for name in ("max_positions", "original_max_positions"):
        if e.given(name):
            args.append(f"{name}={e.a(name)}")
    return f"ops.rope_table({', '.join(args + e.seq_arg())})"


def _table_infer(ctx) -> list[TType]:
    pos = ctx.expect_dtype("pos", "int")
    if len(pos.shape) != 2:
        raise ShapeError(f"'pos' must be [B, S], got {pos}")
    t = TType(pos.shape + (ctx.attr("dim"),))
    return [t, t]


register(OpDef(
    name="rope_table", doc="cos, sin = rotary tables for integer positions [B, S] -> [B, S, dim]",
    operands=("pos",), outputs=2, context=True, fusion="opaque", run="rope_table",
    sequence=("pos", 1),
    attrs=(Attr("dim", "expr", required=True, check="positive"), Attr("theta", "expr", required=True, check="positive"),
           Attr("scaling", "expr", default=None, doc="the rope_scaling / rope_parameters dict, or null",
                check="rope_scaling"),
           Attr("max_positions", "expr", default=None,
                doc="max_position_embeddings: LongRoPE's default factor is its ratio to the original context"),
           Attr("original_max_positions", "expr", default=None,
                doc="the pretraining context, where the scaling dict does not say it (older LongRoPE configs)")),
    infer=_table_infer, emit=_table_emit,
    shape_doc="two values, cos and sin: int positions [B, S] -> [B, S, dim] each",
    example="cos, sin: {op: rope_table, pos: position_ids, dim: head_dim, theta: rope_theta}"))


def _rope_infer(ctx) -> list[TType]:
    x = ctx.expect_rank("x", 4)
    cos = ctx.expect_rank("cos", 3)
    ctx.expect_same(x.shape[2], cos.shape[1], "sequence dims of 'x' and 'cos' must agree")
    return [x]


register(OpDef(
    name="rope", doc="x * cos + rotate(x) * sin on [B, H, S, D]: dim i pairs with i + D/2 (layout half, Llama's) "
                     "or with its neighbour (interleaved, GPT-J's); the table is rope_table's either way",
    operands=("x", "cos", "sin"), infer=_rope_infer, fusion="broadcast", triton="rope", run="rope",
    # cos/sin [B, S, D] line up with x [B, H, S, D] on B and S (not torch's right-aligned broadcasting)
    parallel=Parallel(dims={"x": {0: 0, 1: 1, 2: 2}, "cos": {0: 0, 1: 2}, "sin": {0: 0, 1: 2}}),
    attrs=(Attr("layout", "enum", default="half", choices=("half", "interleaved"),
                doc="which dims rotate together: the two halves, or adjacent pairs"),),
    emit=lambda e: f"ops.rope({e['x']}, {e['cos']}, {e['sin']}"
                   + (", interleaved=True)" if e.const("layout") == "interleaved" else ")"),
    shape_doc="x [B, H, S, D] with a table [B, S, R], R <= D (partial rotary), -> the shape of x",
    example="q: {op: rope, x: q, cos: cos, sin: sin, layout: interleaved}"))
