"""Ops of tensor parallelism, inserted by the shard pass (compiler/passes/shard.py), never written in a
spec: the collectives that join the ranks' shares, and an embedding lookup over a row-split table
(run time: runtime/ops/parallel.py). Without a process group each is the identity (or the lookup)."""
from __future__ import annotations

from .registry import Attr, OpDef, ShapeError, TType, register


def _gather_infer(ctx) -> list[TType]:
    x = ctx["x"]
    dim = ctx.attr("dim")
    if dim is None or not dim.is_constant():
        raise ShapeError(f"'dim' must be a constant, got {dim}")
    d = int(dim.evaluate({})) % len(x.shape)
    return [TType(x.shape[:d] + (ctx.attr("size"),) + x.shape[d + 1:], x.dtype)]


register(OpDef(
    name="all_reduce", doc="the sum of x over the ranks (each holds a partial sum), on every rank",
    operands=("x",), infer=lambda ctx: [ctx["x"]], context=True, fusion="opaque", positionwise=True,
    internal=True, run="all_reduce", emit=lambda e: f"ops.all_reduce({e['x']}, ctx)"))

register(OpDef(
    name="all_gather", doc="the ranks' consecutive shares of x along `dim` joined, `size` in all, on every rank",
    operands=("x",), attrs=(Attr("dim", "expr", required=True), Attr("size", "expr", required=True)),
    infer=_gather_infer, context=True, fusion="opaque", positionwise=True, internal=True, run="all_gather",
    emit=lambda e: f"ops.all_gather({e['x']}, ctx, {e.a('dim')}, {e.a('size')})"))


def _shard_infer(ctx) -> list[TType]:
    ids = ctx.expect_dtype("ids", "int")
    return [TType(ids.shape + (ctx.param("w").dims["dim"],))]


register(OpDef(
    name="embedding_shard", doc="rows of w picked by ids, where this rank holds rows start.. of the table; zeros elsewhere",
    operands=("ids",), params={"w": "embedding"}, attrs=(Attr("start", "expr", required=True),),
    infer=_shard_infer, fusion="opaque", internal=True, run="embedding_shard",
    emit=lambda e: f"ops.embedding_shard({e['ids']}, {e.p('w')}.weight, {e.a('start')})"))
