"""Primitives that read a weight matrix: linear projections and embedding lookups."""
from __future__ import annotations

from .registry import OpDef, Parallel, ShapeError, TType, register


def _linear_infer(ctx) -> list[TType]:
    x = ctx.expect_dtype("x", "float")
    w = ctx.param("w")
    if not x.shape:
        raise ShapeError(f"'x' must have at least one dimension, got {x}")
    ctx.expect_same(x.shape[-1], w.dims["in"], f"last dim of 'x' must equal the input size of '{w.name}'")
    return [TType(x.shape[:-1] + (w.dims["out"],))]


register(OpDef(
    name="linear", doc="x @ w.T + b over the last dimension", operands=("x",), params={"w": "linear"},
    infer=_linear_infer, emit=lambda e: f"{e.p('w')}({e['x']})", fusion="matmul", positionwise=True,
    parallel=lambda ranks, attrs: Parallel(dims={"x": {d: d for d in range(ranks["x"] - 1)}},
                                           param_out={("w", "out"): -1}, contracted={("w", "in"): ("x", -1)})))


def _embedding_infer(ctx) -> list[TType]:
    ids = ctx.expect_dtype("ids", "int")
    w = ctx.param("w")
    return [TType(ids.shape + (w.dims["dim"],))]


register(OpDef(
    name="embedding", doc="rows of w picked by integer ids", operands=("ids",), params={"w": "embedding"},
    infer=_embedding_infer, emit=lambda e: f"{e.p('w')}({e['ids']})", fusion="opaque",
    parallel=lambda ranks, attrs: Parallel(dims={"ids": {d: d for d in range(ranks["ids"])}},
                                           param_out={("w", "dim"): -1}, gathered={("w", "num"): "ids"},
                                           split_rows="embedding_shard")))
