"""Picking and joining: positions computed from ids, one token, slices, gathers and index lookups,
joining and reshaping sequences, integer arithmetic on ids, tanh for poolers."""
from __future__ import annotations

from .elementwise import is_one
from .registry import DIM, Attr, OpDef, Parallel, ShapeError, TType, register



register(OpDef(
    name="keep_positions", doc="the last positions of x [B, S, ...] the caller asked for (all by default)",
    operands=("x",), context=True, fusion="opaque", internal=True, run="keep_positions",
    infer=lambda ctx: [ctx.expect_rank("x", tuple(range(2, 9)))],
    emit=lambda e: f"ops.keep_positions({e['x']}, ctx)", shape_doc="x [B, S, ...] with S cut to the positions kept"))


register(OpDef(
    name="positions", doc="absolute positions past .. past+S-1 for every row of ids [B, S] (int)",
    operands=("ids",), context=True, fusion="opaque", run="positions", sequence=("ids", 1),
    infer=lambda ctx: [TType(ctx.expect_rank("ids", 2).shape, "int")],
    emit=lambda e: f"ops.positions({', '.join([e['ids'], 'ctx', *e.seq_arg()])})",
    shape_doc="int, the shape of ids [B, S]", example="pos: {op: positions, ids: input_ids}"))


def _int_same(ctx) -> list[TType]:
    return [TType(ctx.expect_dtype("x", "int").shape, "int")]


register(OpDef(
    name="not_equal", doc="1 where the integer x differs from `value`, else 0 (int), e.g. non-padding ids",
    operands=("x",), attrs=(Attr("value", "expr", required=True),), infer=_int_same, fusion="elementwise",
    emit=lambda e: f"({e['x']} != {e.a('value')}).long()",
    shape_doc="int, the shape of the int x (ne gives the same as bool)",
    example="mask: {op: not_equal, x: input_ids, value: pad_token_id}"))

register(OpDef(
    name="add_scalar", doc="x + value, keeping x's dtype (an offset on integer ids or positions)",
    operands=("x",), attrs=(Attr("value", "expr", required=True),),
    infer=lambda ctx: [ctx["x"]], fusion="elementwise", emit=lambda e: f"({e['x']} + {e.a('value')})",
    shape_doc="the shape and dtype of x", example="pos: {op: add_scalar, x: pos, value: padding_idx + 1}"))


def _select_infer(ctx) -> list[TType]:
    x = ctx["x"]
    dim = ctx.axis("dim", len(x.shape))
    return [TType(x.shape[:dim] + x.shape[dim + 1:], x.dtype)]


register(OpDef(
    name="select", doc="x.select(dim, index): one slice along dim, which disappears (the first token, one logit)",
    operands=("x",), attrs=(Attr("dim", "expr", required=True), Attr("index", "expr", required=True)),
    infer=_select_infer, fusion="injective", emit=lambda e: f"{e['x']}.select({e.a('dim')}, {e.a('index')})",
    shape_doc="x without `dim`", example="first: {op: select, x: h, dim: 1, index: 0}",
    parallel=lambda ranks, attrs: _select_parallel(ranks["x"], attrs)))


def _select_parallel(rank: int, attrs: dict) -> Parallel:
    """Every dim but the one picked from is independent: it moves up one place past the picked dim."""
    picked = int(attrs["dim"].evaluate({})) % rank
    return Parallel(dims={"x": {d: d - (d > picked) for d in range(rank) if d != picked}})


def _concat_infer(ctx) -> list[TType]:
    from compiler.symbolic import same_value
    from runtime.expr import parse_expr
    a, b = ctx["a"], ctx["b"]
    if len(a.shape) != len(b.shape) or a.dtype != b.dtype:
        raise ShapeError(f"'a' and 'b' must have the same rank and dtype, got {a} and {b}")
    dim = ctx.axis("dim", len(a.shape))
    out = []
    for i, (x, y) in enumerate(zip(a.shape, b.shape)):
        if i == dim:
            out.append(parse_expr(f"({x}) + ({y})"))
        elif same_value(x, y) or is_one(y):
            out.append(x)
        elif is_one(x):
            out.append(y)
        else:
            raise ShapeError(f"dim {i} differs and neither is 1: {a} vs {b}")
    return [TType(tuple(out), a.dtype)]


register(OpDef(
    name="concat", doc="join a and b along dim, broadcasting size-1 dims elsewhere", operands=("a", "b"),
    attrs=(Attr("dim", "expr", required=True),), infer=_concat_infer, fusion="injective", run="concat",
    emit=lambda e: f"ops.concat({e['a']}, {e['b']}, {e.a('dim')})",
    shape_doc="a and b of one rank and dtype; sizes along `dim` add up, other dims agree or are 1 (broadcast)",
    example="h: {op: concat, a: cls, b: patches, dim: 1}"))


def _flatten_infer(ctx) -> list[TType]:
    from runtime.expr import parse_expr
    x = ctx["x"]
    start = ctx.axis("start", len(x.shape))
    end = ctx.axis("end", len(x.shape))
    if end < start:
        raise ShapeError(f"'end' ({end}) comes before 'start' ({start})")
    merged = parse_expr(" * ".join(f"({d})" for d in x.shape[start:end + 1]))
    return [TType(x.shape[:start] + (merged,) + x.shape[end + 1:], x.dtype)]


register(OpDef(
    name="flatten", doc="merge dims start..end (inclusive) into one", operands=("x",),
    attrs=(Attr("start", "expr", required=True), Attr("end", "expr", default=-1)),
    infer=_flatten_infer, fusion="injective", emit=lambda e: f"{e['x']}.flatten({e.a('start')}, {e.a('end')})",
    shape_doc="x with dims start..end replaced by their product", example="patches: {op: flatten, x: patches, start: 2}"))


def _transpose_infer(ctx) -> list[TType]:
    x = ctx["x"]
    a, b = ctx.axis("dim0", len(x.shape)), ctx.axis("dim1", len(x.shape))
    shape = list(x.shape)
    shape[a], shape[b] = shape[b], shape[a]
    return [TType(tuple(shape), x.dtype)]


register(OpDef(
    name="transpose", doc="swap two dims", operands=("x",),
    attrs=(Attr("dim0", "expr", required=True), Attr("dim1", "expr", required=True)),
    infer=_transpose_infer, fusion="injective", emit=lambda e: f"{e['x']}.transpose({e.a('dim0')}, {e.a('dim1')})",
    shape_doc="x with dims dim0 and dim1 swapped", example="patches: {op: transpose, x: patches, dim0: 1, dim1: 2}",
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
    emit=lambda e: f"{e.p('w')}.weight", shape_doc="the param's declared shape, in the model's dtype",
    example="cls: {op: param, w: cls_token}"))



def _slice_infer(ctx) -> list[TType]:
    from runtime.expr import parse_expr
    x = ctx["x"]
    dim = ctx.axis("dim", len(x.shape))
    size = x.shape[dim]
    step = ctx.const("step")
    if step < 1:
        raise ShapeError(f"'step' must be at least 1, got {step}")

    def bound(attr: str, default: str) -> str:
        e = ctx.attr(attr)
        if e is None:
            return default
        # a negative constant counts from the end, like Python; a stop past the end stops at the end
        negative = e.is_constant() and isinstance(e.evaluate({}), int) and e.evaluate({}) < 0
        return f"({size}) + ({e})" if negative else f"min({size}, {e})" if attr == "end" else f"({e})"

    start, end = bound("start", "0"), bound("end", f"({size})")
    length = parse_expr(f"({end}) - ({start})" if step == 1 else f"(({end}) - ({start}) + {step - 1}) // {step}")
    return [TType(x.shape[:dim] + (length,) + x.shape[dim + 1:], x.dtype)]


def _slice_emit(e) -> str:
    dim = e.const("dim")
    given = {b: e.a(b) if e.const(b) is not None else "" for b in ("start", "end")}
    part = f"{given['start']}:{given['end']}" + (f":{e.a('step')}" if e.const("step") != 1 else "")
    index = [":"] * dim + [part] if dim >= 0 else ["...", part] + [":"] * (-dim - 1)
    return f"{e['x']}[{', '.join(index)}]"


register(OpDef(
    name="slice", doc="x[start:end:step] along dim (Python's rules: negative counts from the end; end past the "
                      "end stops there)",
    operands=("x",), infer=_slice_infer, emit=_slice_emit, fusion="injective",
    attrs=(DIM, Attr("start", "expr", doc="default 0"),
           Attr("end", "expr", doc="default: the end"), Attr("step", "expr", default=1, doc="a constant >= 1")),
    shape_doc="x with `dim` of size (end - start) / step, rounded up", example="rot: {op: slice, x: q, dim: -1, end: rotary_dim}"))


def _gather_infer(ctx) -> list[TType]:
    x, index = ctx["x"], ctx.expect_dtype("index", "int")
    if len(x.shape) != len(index.shape):
        raise ShapeError(f"'x' and 'index' must have the same rank, got {x} and {index}")
    ctx.axis("dim", len(x.shape))
    return [TType(index.shape, x.dtype)]


register(OpDef(
    name="gather", doc="out[i][j] = x[index[i][j]][j] along dim (torch.gather): per-element picks",
    operands=("x", "index"), attrs=(DIM,),
    infer=_gather_infer, fusion="injective", emit=lambda e: f"torch.gather({e['x']}, {e.a('dim')}, {e['index']})",
    shape_doc="the shape of index (int, same rank as x), in x's dtype", example="picked: {op: gather, x: logp, index: labels, dim: -1}"))


def _take_infer(ctx) -> list[TType]:
    x, index = ctx["x"], ctx.expect_dtype("index", "int")
    if not index.shape:
        raise ShapeError(f"'index' must have at least one dim, got {index}; select takes a single position")
    dim = ctx.axis("dim", len(x.shape))
    return [TType(x.shape[:dim] + index.shape + x.shape[dim + 1:], x.dtype)]


register(OpDef(
    name="take", doc="the entries of x at positions `index` along dim; index's dims replace dim (index_select "
                     "for any index shape)",
    operands=("x", "index"), attrs=(DIM,), infer=_take_infer, fusion="injective",
    emit=lambda e: (f"{e['x']}.index_select({e.a('dim')}, {e['index']}.reshape(-1))"
                    f".unflatten({e.a('dim')}, {e['index']}.shape)"),
    shape_doc="x with `dim` replaced by the dims of index (int)", example="rows: {op: take, x: table, index: ids, dim: 0}"))


def _one_hot_infer(ctx) -> list[TType]:
    x = ctx.expect_dtype("x", "int")
    return [TType(x.shape + (ctx.attr("num_classes"),), "int")]


register(OpDef(
    name="one_hot", doc="1 at each int x's class, 0 elsewhere (int)", operands=("x",),
    attrs=(Attr("num_classes", "expr", required=True),), infer=_one_hot_infer, fusion="injective",
    emit=lambda e: f"F.one_hot({e['x']}, {e.a('num_classes')})",
    shape_doc="int, x's shape and one more dim of num_classes", example="chosen: {op: one_hot, x: experts, num_classes: num_experts}"))
