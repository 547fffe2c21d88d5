"""Primitives that only move data: splitting and merging attention heads, adding, removing and
stretching dims, reshaping."""
from __future__ import annotations

from .elementwise import is_one
from .registry import DIM, Attr, OpDef, Parallel, ShapeError, TType, register


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
    emit=lambda e: f"{e['x']}.unflatten(-1, ({e.a('heads')}, -1)).transpose(1, 2)",
    shape_doc="[B, S, heads * head_dim] -> [B, heads, S, head_dim]", example="q: {op: split_heads, x: q, heads: num_heads}"))


def _merge_heads_infer(ctx) -> list[TType]:
    from runtime.expr import parse_expr
    x = ctx.expect_rank("x", 4)
    b, h, s, d = x.shape
    return [TType((b, s, parse_expr(f"({h}) * ({d})")), x.dtype)]


register(OpDef(
    name="merge_heads", doc="[B, H, S, D] -> [B, S, H*D]", operands=("x",),
    infer=_merge_heads_infer, fusion="injective", parallel=Parallel(dims={"x": {0: 0, 1: 2, 2: 1}}),
    emit=lambda e: f"{e['x']}.transpose(1, 2).flatten(2)",
    shape_doc="[B, H, S, D] -> [B, S, H * D]", example="y: {op: merge_heads, x: y}"))


def _unsqueeze_infer(ctx) -> list[TType]:
    from runtime.expr import parse_expr
    x = ctx["x"]
    dim = ctx.axis("dim", len(x.shape), extra=1)
    return [TType(x.shape[:dim] + (parse_expr(1),) + x.shape[dim:], x.dtype)]


register(OpDef(
    name="unsqueeze", doc="a new dim of size 1 at dim (negative counts from the end of the result)", operands=("x",),
    attrs=(DIM,), infer=_unsqueeze_infer, fusion="injective", emit=lambda e: f"{e['x']}.unsqueeze({e.a('dim')})",
    shape_doc="x with a dim of size 1 inserted at dim", example="slopes: {op: unsqueeze, x: slopes, dim: -1}"))


def _squeeze_infer(ctx) -> list[TType]:
    x = ctx["x"]
    dim = ctx.axis("dim", len(x.shape))
    if not is_one(x.shape[dim]):
        raise ShapeError(f"dim {dim} of 'x' must have size 1, got {x}")
    return [TType(x.shape[:dim] + x.shape[dim + 1:], x.dtype)]


register(OpDef(
    name="squeeze", doc="removes dim, which must have size 1", operands=("x",), attrs=(DIM,), infer=_squeeze_infer,
    fusion="injective", emit=lambda e: f"{e['x']}.squeeze({e.a('dim')})",
    shape_doc="x without dim (of size 1)", example="h: {op: squeeze, x: h, dim: 1}"))


def _keep(d) -> bool:
    """-1 in a target shape: this dim as it is."""
    return d.is_constant() and d.evaluate({}) == -1


def _expand_infer(ctx) -> list[TType]:
    from compiler.symbolic import same_value
    x = ctx["x"]
    if ("like" in ctx.inputs) == (ctx.attr("shape") is not None):
        raise ShapeError("give either 'like' (a tensor whose shape to take) or 'shape', one of them")
    target = ctx["like"].shape if "like" in ctx.inputs else ctx.attr("shape").args
    if len(target) < len(x.shape):
        raise ShapeError(f"the target shape [{', '.join(map(str, target))}] has fewer dims than x {x}")
    lead = len(target) - len(x.shape)
    out = list(target[:lead])
    for d, t in zip(x.shape, target[lead:]):
        if _keep(t) or same_value(d, t):
            out.append(d)
        elif is_one(d):
            out.append(t)
        else:
            raise ShapeError(f"cannot expand {x} to [{', '.join(map(str, target))}]: a dim of size {d} stretches only from 1")
    if any(_keep(t) for t in out):
        raise ShapeError("-1 (keep) is allowed only where x has a dim")
    return [TType(tuple(out), x.dtype)]


def _expand_emit(e) -> str:
    if "like" in e.values:
        return f"{e['x']}.expand_as({e['like']})"
    return f"{e['x']}.expand({', '.join(source for _, source in e.entries('shape'))})"


register(OpDef(
    name="expand", doc="x stretched along its size-1 dims (and new leading dims) without copying, to the shape of "
                       "`like` or to `shape`",
    operands=("x", "like"), optional_operands=("like",), infer=_expand_infer, emit=_expand_emit, fusion="injective",
    attrs=(Attr("shape", "dims", doc="the target shape: config expressions; -1 keeps x's dim"),),
    shape_doc="like's shape, or `shape`; x's dims must be 1 or equal there",
    example="cls: {op: expand, x: cls_token, like: first_patch}"))


def _reshape_infer(ctx) -> list[TType]:
    from compiler.symbolic import same_value
    from runtime.expr import parse_expr
    x = ctx["x"]
    entries = list(ctx.attr("shape").args)
    out, inferred = [], None
    for i, d in enumerate(entries):
        value = d.evaluate({}) if d.is_constant() else None
        if value == 0 and not isinstance(value, bool):
            if i >= len(x.shape):
                raise ShapeError(f"shape entry {i} is 0 (keep x's dim {i}), but x {x} has {len(x.shape)} dims")
            out.append(x.shape[i])
        elif value == -1:
            if inferred is not None:
                raise ShapeError("only one shape entry may be -1 (inferred)")
            inferred = i
            out.append(None)
        else:
            out.append(d)
    # dims that appear on both sides cancel, so the inferred one reads `d // h`, not `B * S * d // (B * S * h)`
    left, right = list(x.shape), []
    for d in (d for d in out if d is not None):
        match = next((i for i, r in enumerate(left) if same_value(r, d)), None)
        if match is None:
            right.append(d)
        else:
            left.pop(match)
    total = " * ".join(f"({d})" for d in left) or "1"
    known = " * ".join(f"({d})" for d in right) or "1"
    if inferred is not None:
        out[inferred] = parse_expr(f"({total}) // ({known})")
    elif not same_value(parse_expr(total), parse_expr(known)):
        raise ShapeError(f"cannot reshape {x} to [{', '.join(map(str, out))}]: the number of elements differs")
    return [TType(tuple(out), x.dtype)]


def _reshape_emit(e) -> str:
    # a constant 0 keeps x's dim at that place; anything else is a size (-1: inferred)
    dims = [f"{e['x']}.shape[{i}]" if value == 0 and not isinstance(value, bool) else source
            for i, (value, source) in enumerate(e.entries("shape"))]
    return f"{e['x']}.reshape({', '.join(dims)})"


register(OpDef(
    name="reshape", doc="x with the same elements in a new shape: entries are config expressions, 0 keeps x's dim "
                        "at that place, one -1 takes what is left",
    operands=("x",), attrs=(Attr("shape", "dims", required=True),), infer=_reshape_infer, emit=_reshape_emit,
    fusion="injective", shape_doc="`shape`, with 0 and -1 resolved; the number of elements unchanged",
    example="h: {op: reshape, x: h, shape: [0, 0, num_heads, -1]}",
    parallel=lambda ranks, attrs: _reshape_parallel(ranks["x"], attrs["shape"].args)))


def _reshape_parallel(rank: int, entries) -> Parallel:
    """The leading dims kept (entries 0) are independent; when one dim of x is left and splits into
    several, a contiguous share of the outermost of them that is not 1 is a contiguous share of that
    dim of x (whole heads of [heads * 3 * head_dim]). Its entry counts those slices: a split
    rewrites it to the rank's share."""
    def const(e):
        return e.evaluate({}) if e.is_constant() else None

    kept = 0
    while kept < min(rank, len(entries)) and const(entries[kept]) == 0:
        kept += 1
    dims = {d: d for d in range(kept)}
    units = {}
    if rank - kept == 1:
        outer = next((o for o in range(kept, len(entries)) if const(entries[o]) != 1), None)
        if outer is not None:
            dims[kept] = outer
            if const(entries[outer]) != -1:
                units[outer] = "shape"
    return Parallel(dims={"x": dims}, units=units)
