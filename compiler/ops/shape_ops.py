"""Primitives that only move data: splitting and merging attention heads."""
from __future__ import annotations

from .registry import Attr, OpDef, Parallel, ShapeError, TType, register


def _split_heads_infer(ctx) -> list[TType]:
    from runtime.expr import parse_expr
    x = ctx.expect_rank("x", 3)
    heads = ctx.attr("heads")
    b, s, width = x.shape
    head_dim = parse_expr(f"({width}) // ({heads})")
    if ctx.attr("head_dim") is not None:
        head_dim = ctx.attr("head_dim")
        ctx.expect_same(width, parse_expr(f"({heads}) * ({head_dim})"), "last dim of 'x' must be heads * head_dim")
    return [TType((b, heads, s, head_dim), x.dtype)]


register(OpDef(
    name="split_heads", doc="[B, S, H*D] -> [B, H, S, D]", operands=("x",),
    attrs=(Attr("heads", "expr", required=True), Attr("head_dim", "expr")),
    infer=_split_heads_infer, fusion="injective",
    # the heads are the outer part of the last dim: a contiguous share of it is a share of whole heads
    parallel=Parallel(dims={"x": {0: 0, 1: 2, 2: 1}}, units={1: "heads"}),
    emit=lambda e: f"{e['x']}.unflatten(-1, ({e.a('heads')}, -1)).transpose(1, 2)"))


def _merge_heads_infer(ctx) -> list[TType]:
    from runtime.expr import parse_expr
    x = ctx.expect_rank("x", 4)
    b, h, s, d = x.shape
    return [TType((b, s, parse_expr(f"({h}) * ({d})")), x.dtype)]


register(OpDef(
    name="merge_heads", doc="[B, H, S, D] -> [B, S, H*D]", operands=("x",),
    infer=_merge_heads_infer, fusion="injective", parallel=Parallel(dims={"x": {0: 0, 1: 2, 2: 1}}),
    emit=lambda e: f"{e['x']}.transpose(1, 2).flatten(2)"))

__all__ = ["ShapeError"]
