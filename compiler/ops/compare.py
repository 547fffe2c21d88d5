"""Comparisons (bool results) and `where`, the choice between two values by a bool one."""
from __future__ import annotations

from .elementwise import broadcast_shape, same_dtype
from .registry import Attr, OpDef, ShapeError, TType, register

OTHER = Attr("value", "expr", doc="a constant or config expression standing for the second operand")


def _operand_or_value(ctx, operand: str) -> bool:
    """The op's second operand is either a tensor or a `value` attribute, never both: True for the tensor."""
    given = operand in ctx.inputs
    if given == (ctx.attr("value") is not None):
        raise ShapeError(f"give either '{operand}' (a tensor) or 'value' (a constant), one of them")
    return given


def _compare_infer(ctx) -> list[TType]:
    operands = ("a", "b") if _operand_or_value(ctx, "b") else ("a",)
    same_dtype(ctx, operands)
    return [TType(broadcast_shape(ctx, operands), "bool")]


def _other(e, operand: str) -> str:
    return e[operand] if operand in e.values else f"({e.a('value')})"


def _comparison(name: str, symbol: str, doc: str, example: str) -> OpDef:
    return register(OpDef(
        name=name, doc=f"a {symbol} b elementwise (bool): {doc}", operands=("a", "b"), optional_operands=("b",),
        attrs=(OTHER,), infer=_compare_infer, fusion="broadcast",
        emit=lambda e: f"{e['a']} {symbol} {_other(e, 'b')}",
        triton=lambda a: f"{{a}} {symbol} " + ("{value}" if a.get("value") is not None else "{b}"),
        shape_doc="bool, the shapes of a and b broadcast (b may be a constant `value`); a and b share a dtype",
        example=example))


_comparison("eq", "==", "equal", "pad: {op: eq, a: input_ids, value: pad_token_id}")
_comparison("ne", "!=", "not equal", "real: {op: ne, a: input_ids, value: pad_token_id}")
_comparison("lt", "<", "less than", "near: {op: lt, a: distance, value: max_exact}")
_comparison("le", "<=", "less than or equal", "seen: {op: le, a: key_pos, b: query_pos}")
_comparison("gt", ">", "greater than", "keep: {op: gt, a: scores, b: threshold}")
_comparison("ge", ">=", "greater than or equal", "late: {op: ge, a: positions, value: window}")


def _where_infer(ctx) -> list[TType]:
    ctx.expect_dtype("cond", "bool")
    operands = ("a", "b") if _operand_or_value(ctx, "b") else ("a",)
    dtype = same_dtype(ctx, operands)
    return [TType(broadcast_shape(ctx, ("cond", *operands)), dtype)]


def _where_emit(e) -> str:
    # a constant `value` becomes a 0-dim tensor in a's dtype, so the result keeps a's dtype as torch.where of two tensors would
    other = e["b"] if "b" in e.values else f"{e['a']}.new_full((), {e.a('value')})"
    return f"torch.where({e['cond']}, {e['a']}, {other})"


register(OpDef(
    name="where", doc="a where cond is true, else b (or the constant `value`), broadcasting like torch",
    operands=("cond", "a", "b"), optional_operands=("b",), attrs=(OTHER,), infer=_where_infer, fusion="broadcast",
    emit=_where_emit,
    triton=lambda a: "tl.where({cond} != 0, {a}, " + ("{value})" if a.get("value") is not None else "{b})"),
    shape_doc="cond (bool), a and b (or `value`) broadcast together; the dtype of a and b",
    example="scores: {op: where, cond: visible, a: scores, value: -1e9}"))
