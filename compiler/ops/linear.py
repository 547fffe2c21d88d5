"""Matrix products: linear projections, embedding lookups, the product of two values."""
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
    shape_doc="x [..., in] -> [..., out] for a linear param [in, out]", example="q: {op: linear, x: h, w: q_proj}",
    quantizable={"w": ("linear", "out")},
    parallel=lambda ranks, attrs: Parallel(dims={"x": {d: d for d in range(ranks["x"] - 1)}},
                                           param_out={("w", "out"): -1}, contracted={("w", "in"): ("x", -1)})))


def _embedding_infer(ctx) -> list[TType]:
    ids = ctx.expect_dtype("ids", "int")
    w = ctx.param("w")
    return [TType(ids.shape + (w.dims["dim"],))]


register(OpDef(
    name="embedding", doc="rows of w picked by integer ids", operands=("ids",), params={"w": "embedding"},
    infer=_embedding_infer, emit=lambda e: f"{e.p('w')}({e['ids']})", fusion="opaque",
    shape_doc="int ids [...] -> [..., dim] for an embedding param [num, dim]", example="h: {op: embedding, ids: input_ids, w: embed}",
    quantizable={"w": ("embedding", "num")},
    parallel=lambda ranks, attrs: Parallel(dims={"ids": {d: d for d in range(ranks["ids"])}},
                                           param_out={("w", "dim"): -1}, gathered={("w", "num"): "ids"},
                                           split_rows="embedding_shard")))


def _matmul_infer(ctx) -> list[TType]:
    from .elementwise import broadcast_types, same_dtype
    a, b = ctx.expect_float("a"), ctx.expect_float("b")
    same_dtype(ctx, ("a", "b"))
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise ShapeError(f"'a' and 'b' must have at least 2 dims, got {a} and {b}")
    ctx.expect_same(a.shape[-1], b.shape[-2], "the last dim of 'a' must equal the second-last of 'b'")
    batch = broadcast_types({"a": TType(a.shape[:-2], a.dtype), "b": TType(b.shape[:-2], b.dtype)})
    return [TType(batch + (a.shape[-2], b.shape[-1]), a.dtype)]


register(OpDef(
    name="matmul", doc="the matrix product a @ b of two values, batched over their leading dims (torch.matmul)",
    operands=("a", "b"), infer=_matmul_infer, fusion="matmul", emit=lambda e: f"torch.matmul({e['a']}, {e['b']})",
    shape_doc="a [..., m, k] @ b [..., k, n] -> [..., m, n], leading dims broadcast; one float dtype",
    example="logits: {op: matmul, a: text_embeds, b: image_embeds_t}"))


def _grouped_linear_infer(ctx) -> list[TType]:
    x = ctx.expect_dtype("x", "float")
    index = ctx.expect_dtype("index", "int")
    w = ctx.param("w")
    if not index.shape:
        raise ShapeError(f"'index' must have at least one dimension (the k experts of each row), got {index}")
    # x is one row per token (shared by its k picks) or one row per pick, laid out like index
    lead = x.shape[:-1]
    if len(lead) == len(index.shape) - 1:
        pairs, what = zip(lead, index.shape[:-1]), "x's leading dims must equal index's but its last (the picks)"
    elif len(lead) == len(index.shape):
        pairs, what = zip(lead, index.shape), "x's leading dims must equal index's dims"
    else:
        raise ShapeError(f"'x' must be [..., in] (one row per token) or [..., k, in] (one row per pick) for "
                         f"index [..., k], got {x} and {index}")
    for a, b in pairs:
        ctx.expect_same(a, b, what)
    ctx.expect_same(x.shape[-1], w.dims["in"], f"last dim of 'x' must equal the input size of '{w.name}'")
    return [TType(index.shape + (w.dims["out"],))]


register(OpDef(
    name="grouped_linear",
    doc="x @ w[e].T + b[e] for each expert e that `index` picks: rows grouped per expert, so only the "
        "experts picked by some row are computed (mixture of experts)",
    operands=("x", "index"), params={"w": "grouped_linear"}, infer=_grouped_linear_infer,
    emit=lambda e: f"{e.p('w')}({e['x']}, {e['index']})", fusion="opaque", positionwise=True,
    shape_doc="x [..., in] or [..., k, in] with int index [..., k] -> [..., k, out] for a grouped_linear "
              "param [num, in, out]",
    example="up: {op: grouped_linear, x: x, index: experts, w: up_proj}",
    # each expert's [out, in] weight quantized as a linear's, stored stacked
    quantizable={"w": ("experts", "out")},
    # as a linear, within every expert: its out features split (each rank holds a slice of every
    # expert), or its in features split into partial sums
    parallel=lambda ranks, attrs: Parallel(dims={"x": {d: d for d in range(ranks["x"] - 1)}},
                                           param_out={("w", "out"): -1}, contracted={("w", "in"): ("x", -1)})))
