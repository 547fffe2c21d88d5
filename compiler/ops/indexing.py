"""Primitives encoders need around the trunk: positions computed from ids, picking one token,
joining and reshaping sequences, integer arithmetic on ids, tanh for poolers."""
from __future__ import annotations

from .registry import Attr, OpDef, Parallel, ShapeError, TType, register


def _const_int(ctx, attr: str) -> int:
    e = ctx.attr(attr)
    if e is None or not e.is_constant():
        raise ShapeError(f"'{attr}' must be a constant integer, got {e}")
    value = e.evaluate({})
    if not isinstance(value, int) or isinstance(value, bool):
        raise ShapeError(f"'{attr}' must be an integer, got {value!r}")
    return value


def _axis(ctx, attr: str, rank: int, extra: int = 0) -> int:
    """A dim attribute made non-negative (negative counts from the end, like torch)."""
    d = _const_int(ctx, attr)
    n = rank + extra
    if not -n <= d < n:
        raise ShapeError(f"'{attr}' is {d}, out of range for a rank-{rank} tensor")
    return d % n


register(OpDef(
    name="keep_positions", doc="the last positions of x [B, S, ...] the caller asked for (all by default)",
    operands=("x",), context=True, fusion="opaque", internal=True, run="keep_positions",
    infer=lambda ctx: [ctx.expect_rank("x", tuple(range(2, 9)))],
    emit=lambda e: f"ops.keep_positions({e['x']}, ctx)"))


register(OpDef(
    name="positions", doc="absolute positions past .. past+S-1 for every row of ids [B, S] (int)",
    operands=("ids",), context=True, fusion="opaque", run="positions", sequence=("ids", 1),
    infer=lambda ctx: [TType(ctx.expect_rank("ids", 2).shape, "int")],
    emit=lambda e: f"ops.positions({', '.join([e['ids'], 'ctx', *e.seq_arg()])})"))


def _int_same(ctx) -> list[TType]:
    return [TType(ctx.expect_dtype("x", "int").shape, "int")]


register(OpDef(
    name="not_equal", doc="1 where the integer x differs from `value`, else 0 (int), e.g. non-padding ids",
    operands=("x",), attrs=(Attr("value", "expr", required=True),), infer=_int_same, fusion="elementwise",
    emit=lambda e: f"({e['x']} != {e.a('value')}).long()"))

def _cumsum_infer(ctx) -> list[TType]:
    _axis(ctx, "dim", len(ctx["x"].shape))
    return _int_same(ctx)


register(OpDef(
    name="cumsum", doc="running sum of an integer tensor along `dim`", operands=("x",),
    attrs=(Attr("dim", "expr", required=True),), infer=_cumsum_infer,
    fusion="opaque", emit=lambda e: f"{e['x']}.cumsum({e.a('dim')})"))

register(OpDef(
    name="add_scalar", doc="x + value, keeping x's dtype (an offset on integer ids or positions)",
    operands=("x",), attrs=(Attr("value", "expr", required=True),),
    infer=lambda ctx: [ctx["x"]], fusion="elementwise", emit=lambda e: f"({e['x']} + {e.a('value')})"))

register(OpDef(
    name="tanh", doc="tanh(x)", operands=("x",), infer=lambda ctx: [ctx.expect_dtype("x", "float")],
    fusion="elementwise", emit=lambda e: f"torch.tanh({e['x']})"))


def _select_infer(ctx) -> list[TType]:
    x = ctx["x"]
    dim = _axis(ctx, "dim", len(x.shape))
    return [TType(x.shape[:dim] + x.shape[dim + 1:], x.dtype)]


register(OpDef(
    name="select", doc="x.select(dim, index): one slice along dim, which disappears (the first token, one logit)",
    operands=("x",), attrs=(Attr("dim", "expr", required=True), Attr("index", "expr", required=True)),
    infer=_select_infer, fusion="injective", emit=lambda e: f"{e['x']}.select({e.a('dim')}, {e.a('index')})"))


def _concat_infer(ctx) -> list[TType]:
    from compiler.symbolic import same_value
    from runtime.expr import parse_expr
    a, b = ctx["a"], ctx["b"]
    if len(a.shape) != len(b.shape) or a.dtype != b.dtype:
        raise ShapeError(f"'a' and 'b' must have the same rank and dtype, got {a} and {b}")
    dim = _axis(ctx, "dim", len(a.shape))
    out = []
    for i, (x, y) in enumerate(zip(a.shape, b.shape)):
        if i == dim:
            out.append(parse_expr(f"({x}) + ({y})"))
        elif same_value(x, y) or _is_one(y):
            out.append(x)
        elif _is_one(x):
            out.append(y)
        else:
            raise ShapeError(f"dim {i} differs and neither is 1: {a} vs {b}")
    return [TType(tuple(out), a.dtype)]


def _is_one(d) -> bool:
    return d.is_constant() and d.evaluate({}) == 1


register(OpDef(
    name="concat", doc="join a and b along dim, broadcasting size-1 dims elsewhere", operands=("a", "b"),
    attrs=(Attr("dim", "expr", required=True),), infer=_concat_infer, fusion="injective", run="concat",
    emit=lambda e: f"ops.concat({e['a']}, {e['b']}, {e.a('dim')})"))


def _flatten_infer(ctx) -> list[TType]:
    from runtime.expr import parse_expr
    x = ctx["x"]
    start = _axis(ctx, "start", len(x.shape))
    end = _axis(ctx, "end", len(x.shape))
    if end < start:
        raise ShapeError(f"'end' ({end}) comes before 'start' ({start})")
    merged = parse_expr(" * ".join(f"({d})" for d in x.shape[start:end + 1]))
    return [TType(x.shape[:start] + (merged,) + x.shape[end + 1:], x.dtype)]


register(OpDef(
    name="flatten", doc="merge dims start..end (inclusive) into one", operands=("x",),
    attrs=(Attr("start", "expr", required=True), Attr("end", "expr", default=-1)),
    infer=_flatten_infer, fusion="injective", emit=lambda e: f"{e['x']}.flatten({e.a('start')}, {e.a('end')})"))


def _transpose_infer(ctx) -> list[TType]:
    x = ctx["x"]
    a, b = _axis(ctx, "dim0", len(x.shape)), _axis(ctx, "dim1", len(x.shape))
    shape = list(x.shape)
    shape[a], shape[b] = shape[b], shape[a]
    return [TType(tuple(shape), x.dtype)]


register(OpDef(
    name="transpose", doc="swap two dims", operands=("x",),
    attrs=(Attr("dim0", "expr", required=True), Attr("dim1", "expr", required=True)),
    infer=_transpose_infer, fusion="injective", emit=lambda e: f"{e['x']}.transpose({e.a('dim0')}, {e.a('dim1')})",
    parallel=lambda ranks, attrs: _transpose_parallel(ranks["x"], attrs)))


def _transpose_parallel(rank: int, attrs: dict) -> Parallel:
    a, b = (int(attrs[k].evaluate({})) % rank for k in ("dim0", "dim1"))
    swap = {a: b, b: a}
    return Parallel(dims={"x": {d: swap.get(d, d) for d in range(rank)}})


def _param_infer(ctx) -> list[TType]:
    w = ctx.param("w")
    return [TType(tuple(w.dims[f"d{i}"] for i in range(len(w.dims))))]


register(OpDef(
    name="param", doc="a tensor param's value (a class token, learned position embeddings)",
    operands=(), params={"w": "tensor"}, infer=_param_infer, fusion="opaque",
    emit=lambda e: f"{e.p('w')}.weight"))

