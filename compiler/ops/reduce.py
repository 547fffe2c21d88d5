"""Ops along one dim: reductions (sum, mean, max, min, argmax, top-k), softmax and p-norm
normalisation, running sums. Those over the last dim that keep x's shape (softmax, log_softmax,
normalize) are row reductions with a Triton lowering (compiler/triton/templates.py ROW_REDUCTIONS);
the others run in PyTorch."""
from __future__ import annotations

from .registry import DIM, FLOATS, LAST_DIM, Attr, OpDef, TType, along_features, register

KEEPDIM = Attr("keepdim", "bool", default=False, doc="keep the reduced dim with size 1 (a constant)")


def _reduced(ctx, dtype: str) -> TType:
    from runtime.expr import parse_expr
    x = ctx["x"]
    dim = ctx.axis("dim", len(x.shape))
    keep = ctx.const("keepdim", (bool,), "true or false")
    rest = (parse_expr(1),) if keep else ()
    return TType(x.shape[:dim] + rest + x.shape[dim + 1:], dtype)


def _reduction(name: str, doc: str, method: str, dtype, example: str, allowed=(*FLOATS, "int"),
               run: str | None = None) -> OpDef:
    """dtype: the result's class, or a function of x's. run: the runtime function computing it
    (`ops.<run>(x, dim, keepdim)`), else the tensor method `method`."""
    def infer(ctx):
        x = ctx.expect_dtype("x", allowed)
        return [_reduced(ctx, dtype(x.dtype) if callable(dtype) else dtype)]

    def emit(e):
        if run:
            return f"ops.{run}({e['x']}, {e.a('dim')}, keepdim={e.a('keepdim')})"
        return f"{e['x']}.{method}({e.a('dim')}, keepdim={e.a('keepdim')})"

    return register(OpDef(
        name=name, doc=doc, operands=("x",), attrs=(DIM, KEEPDIM), infer=infer, fusion="reduction",
        positionwise=along_features, emit=emit, run=run,
        shape_doc="x without `dim` (size 1 there with keepdim)", example=example))


def _sum_dtype(dtype: str) -> str:
    return "int" if dtype == "bool" else dtype     # torch sums bools as int64


_reduction("sum", "the sum of x along dim (bools count as integers)", "sum", _sum_dtype,
           "total: {op: sum, x: weights, dim: -1, keepdim: true}", allowed=(*FLOATS, "int", "bool"), run="reduce_sum")
_reduction("mean", "the mean of x along dim", "mean", lambda d: d, "pooled: {op: mean, x: h, dim: 1}", allowed=FLOATS)
_reduction("max", "the largest value of x along dim", "amax", lambda d: d, "m: {op: max, x: scores, dim: -1}")
_reduction("min", "the smallest value of x along dim", "amin", lambda d: d, "m: {op: min, x: scores, dim: -1}")
_reduction("argmax", "the index of the largest value of x along dim (int); the first one on ties", "argmax", "int",
           "eot: {op: argmax, x: input_ids, dim: -1}")


def _topk_infer(ctx) -> list[TType]:
    x = ctx.expect_dtype("x", (*FLOATS, "int"))
    dim = ctx.axis("dim", len(x.shape))
    ctx.const("largest", (bool,), "true or false")
    ctx.const("sorted", (bool,), "true or false")
    shape = x.shape[:dim] + (ctx.attr("k"),) + x.shape[dim + 1:]
    return [TType(shape, x.dtype), TType(shape, "int")]


register(OpDef(
    name="topk", doc="the k largest (or smallest) values of x along dim and their indices (int)",
    operands=("x",), outputs=2, infer=_topk_infer, fusion="opaque", positionwise=along_features,
    attrs=(Attr("k", "expr", required=True), LAST_DIM, Attr("largest", "bool", default=True),
           Attr("sorted", "bool", default=True, doc="values in order, largest first")),
    emit=lambda e: (f"ops.topk({e['x']}, {e.a('k')}, dim={e.a('dim')}, largest={e.a('largest')}, "
                    f"sorted={e.a('sorted')})"), run="topk",
    shape_doc="two values: x with `dim` of size k, in x's dtype, and the same shape in int",
    example="weights, experts: {op: topk, x: probs, k: num_experts_per_tok}"))


def _along_infer(ctx) -> list[TType]:
    x = ctx.expect_float("x")
    ctx.axis("dim", len(x.shape))
    return [x]


def _last_dim(lowering: str):
    """The row-reduction lowering when the op runs along the last dim (the kernel's row)."""
    return lambda a: lowering if a.get("dim") == -1 else None


register(OpDef(
    name="softmax", doc="exp(x) / sum(exp(x)) along dim, computed in fp32 and rounded once to x's dtype",
    operands=("x",), attrs=(LAST_DIM,), infer=_along_infer, fusion="reduction", triton=_last_dim("softmax"),
    positionwise=along_features,
    emit=lambda e: f"ops.softmax({e['x']}, {e.a('dim')})", run="softmax",
    shape_doc="the shape and dtype of x (float)", example="probs: {op: softmax, x: router_logits, dim: -1}"))

register(OpDef(
    name="log_softmax", doc="x - log(sum(exp(x))) along dim", operands=("x",), attrs=(LAST_DIM,),
    infer=_along_infer, fusion="reduction", triton=_last_dim("log_softmax"), positionwise=along_features,
    emit=lambda e: f"torch.log_softmax({e['x']}, {e.a('dim')})",
    shape_doc="the shape and dtype of x (float)", example="logp: {op: log_softmax, x: logits}"))


def _normalize_triton(a) -> str | None:
    return "normalize" if a.get("dim") == -1 and a.get("p") == 2 and isinstance(a.get("eps"), (int, float)) else None


register(OpDef(
    name="normalize", doc="x / max(||x||_p, eps) along dim (F.normalize): unit vectors for p = 2",
    operands=("x",), infer=_along_infer, fusion="reduction", triton=_normalize_triton, positionwise=along_features,
    attrs=(Attr("p", "expr", default=2, doc="the norm's exponent"), LAST_DIM,
           Attr("eps", "expr", default=1e-12, doc="the smallest norm divided by", check="positive")),
    emit=lambda e: f"F.normalize({e['x']}, p={e.a('p')}, dim={e.a('dim')}, eps={e.a('eps')})",
    shape_doc="the shape and dtype of x (float)", example="emb: {op: normalize, x: emb}"))


def _cumsum_infer(ctx) -> list[TType]:
    x = ctx.expect_dtype("x", (*FLOATS, "int", "bool"))
    ctx.axis("dim", len(x.shape))
    return [TType(x.shape, _sum_dtype(x.dtype))]


register(OpDef(
    name="cumsum", doc="running sum of x along dim (bools count as integers)", operands=("x",),
    attrs=(DIM,), infer=_cumsum_infer, fusion="opaque", positionwise=along_features,
    emit=lambda e: f"{e['x']}.cumsum({e.a('dim')})",
    shape_doc="the shape of x; its dtype (int for bool)", example="pos: {op: cumsum, x: mask, dim: 1}"))
