"""Pointwise primitives: arithmetic with broadcasting, activations and other functions of one value."""
from __future__ import annotations

from .registry import FLOATS, Attr, OpDef, ShapeError, TType, register


def broadcast_shape(ctx, operands: tuple[str, ...]) -> tuple:
    """The shape of operands broadcast together, like torch (dims aligned from the right, 1 stretches)."""
    return broadcast_types({o: ctx[o] for o in operands})


def broadcast_types(types: dict) -> tuple:
    """broadcast_shape over named types (TType by operand name)."""
    from compiler.symbolic import same_value
    shapes = [list(reversed(t.shape)) for t in types.values()]
    out = []
    for i in range(max(len(s) for s in shapes)):
        dim = None
        for s in shapes:
            d = s[i] if i < len(s) else None
            if d is None or (dim is not None and is_one(d)):
                continue
            if dim is None or is_one(dim) or same_value(dim, d):
                dim = d
            else:
                listed = ", ".join(f"'{o}' is {t}" for o, t in types.items())
                raise ShapeError(f"shapes do not broadcast: {listed}")
        out.append(dim)
    return tuple(reversed(out))


def same_dtype(ctx, operands: tuple[str, ...]) -> str:
    dtypes = {ctx[o].dtype for o in operands}
    if len(dtypes) > 1:
        listed = ", ".join(f"'{o}' is {ctx[o]}" for o in operands)
        raise ShapeError(f"dtype clash: {listed}; cast one of them first")
    return dtypes.pop()


def _broadcast(ctx) -> list[TType]:
    dtype = same_dtype(ctx, ("a", "b"))
    return [TType(broadcast_shape(ctx, ("a", "b")), dtype)]


def is_one(d) -> bool:
    return d.is_constant() and d.evaluate({}) == 1


def _same(ctx) -> list[TType]:
    return [ctx.expect_float("x")]


def _numeric(ctx) -> list[TType]:
    """A float or int tensor, unchanged in shape and dtype."""
    return [ctx.expect_dtype("x", (*FLOATS, "int"))]


BROADCAST_DOC = "the shapes of a and b broadcast like torch's; both have the same dtype, which the result keeps"
SAME_DOC = "the shape and dtype of x"


def _binary(name: str, symbol: str, doc: str, identity: dict, example: str) -> OpDef:
    return register(OpDef(
        name=name, doc=doc, operands=("a", "b"), infer=_broadcast, identity=identity,
        emit=lambda e: f"{e['a']} {symbol} {e['b']}", fusion="broadcast", triton=f"{{a}} {symbol} {{b}}",
        shape_doc=BROADCAST_DOC, example=example))


_binary("add", "+", "a + b, broadcasting like torch", {"a": 0.0, "b": 0.0}, "x: {op: add, a: x, b: h}")
_binary("sub", "-", "a - b, broadcasting like torch", {"b": 0.0}, "d: {op: sub, a: x, b: mean}")
_binary("mul", "*", "a * b, broadcasting like torch", {"a": 1.0, "b": 1.0}, "h: {op: mul, a: gate, b: up}")


def _div_infer(ctx) -> list[TType]:
    out = _broadcast(ctx)[0]
    rounding = ctx.attr("rounding")
    if out.dtype not in FLOATS and (rounding is None or rounding.evaluate({}) == "none"):
        raise ShapeError(f"true division needs float operands, got {out}; give rounding: floor or trunc for integers")
    return [out]


def _div_emit(e) -> str:
    rounding = e.const("rounding")
    if rounding in (None, "none"):
        return f"{e['a']} / {e['b']}"
    return f'torch.div({e["a"]}, {e["b"]}, rounding_mode="{rounding}")'


register(OpDef(
    name="div", doc="a / b, broadcasting like torch; rounding floor or trunc gives torch's rounded division",
    operands=("a", "b"), infer=_div_infer, emit=_div_emit, fusion="broadcast", identity={"b": 1.0},
    attrs=(Attr("rounding", "enum", default="none", choices=("none", "floor", "trunc"),
                doc="none: true division (float operands); floor or trunc: rounded, integers allowed"),),
    # IEEE division (div_rn), as torch computes it; rounded division has no Triton form here
    triton=lambda a: "tl.div_rn({a}, {b})" if a.get("rounding") in (None, "none") else None,
    shape_doc=BROADCAST_DOC + "; true division needs float operands",
    example="p: {op: div, a: weights, b: total}"))


def _scale_emit(e) -> str:
    rounded = e.const("round_factor")
    if rounded in (False, None):
        return f"{e['x']} * ({e.a('by')})"
    # A tensor constant in x's dtype, rounded once from the exact value, like a buffer of the model.
    factor = f"torch.tensor({e.a('by')}, dtype={e['x']}.dtype, device={e['x']}.device)"
    if rounded is True:
        return f"{e['x']} * {factor}"
    return f"{e['x']} * ({factor} if {e.a('round_factor')} else {e.a('by')})"


register(OpDef(
    name="scale", doc="x * factor, factor a config expression (e.g. embedding scaling by hidden ** 0.5)",
    operands=("x",),
    attrs=(Attr("by", "expr", required=True),
           Attr("round_factor", "bool", default=False,
                doc="round the factor to x's dtype before multiplying (Gemma's normalizer in bf16), "
                    "instead of multiplying by the exact factor in the op's compute precision")),
    infer=_same, emit=_scale_emit, fusion="elementwise",
    # the kernel multiplies by the exact factor; a factor rounded to the dtype first has no Triton form
    triton=lambda a: "{x} * {by}" if a.get("round_factor") in (False, None) else None,
    shape_doc=SAME_DOC, example="h: {op: scale, x: h, by: hidden_size ** 0.5}"))


def _full_like_emit(e) -> str:
    value = e.const("value")
    if value == 0 and not isinstance(value, bool):
        return f"torch.zeros_like({e['x']})"
    return f"torch.full_like({e['x']}, {e.a('value')})"


register(OpDef(
    name="full_like", doc="a tensor shaped like x, every element `value`", operands=("x",),
    attrs=(Attr("value", "expr", required=True),), infer=lambda ctx: [ctx["x"]], emit=_full_like_emit,
    fusion="opaque", internal=True, shape_doc=SAME_DOC))


def _unary(name: str, doc: str, emit: str, triton: str | None, example: str, infer=_same, **kw) -> OpDef:
    return register(OpDef(
        name=name, doc=doc, operands=("x",), infer=infer, emit=lambda e: emit.format(x=e["x"]),
        fusion="elementwise", triton=triton, shape_doc=SAME_DOC, example=example, **kw))


_unary("silu", "x * sigmoid(x)", "ops.silu({x})", "{x} * tl.sigmoid({x})", "gate: {op: silu, x: gate}")
_unary("relu", "max(x, 0)", "F.relu({x})", "tl.maximum({x}, 0.0)", "h: {op: relu, x: h}")
_unary("sigmoid", "1 / (1 + exp(-x))", "torch.sigmoid({x})", "tl.sigmoid({x})", "gate: {op: sigmoid, x: gate}")
_unary("exp", "e ** x", "torch.exp({x})", "tl.exp({x})", "scale: {op: exp, x: logit_scale}")
_unary("log", "the natural logarithm of x", "torch.log({x})", "tl.log({x})", "lp: {op: log, x: p}")
_unary("sqrt", "the square root of x", "torch.sqrt({x})", "tl.sqrt_rn({x})", "r: {op: sqrt, x: var}")
_unary("tanh", "tanh(x)", "torch.tanh({x})", None, "pooled: {op: tanh, x: pooled}")
_unary("neg", "-x", "-{x}", "-{x}", "m: {op: neg, x: m}", infer=_numeric)
_unary("abs", "|x|", "torch.abs({x})", "tl.abs({x})", "d: {op: abs, x: d}", infer=_numeric)


def _gelu_emit(e) -> str:
    approx = e.const("approximate")
    return f"F.gelu({e['x']})" if approx == "none" else f'F.gelu({e["x"]}, approximate="{approx}")'


# tanh(u) = 2 * sigmoid(2u) - 1: tl.math has no tanh
_GELU_TRITON = {
    "none": "0.5 * {x} * (1.0 + tl.math.erf({x} * 0.7071067811865476))",
    "tanh": "0.5 * {x} * (2.0 * tl.sigmoid(1.5957691216057308 * ({x} + 0.044715 * {x} * {x} * {x})))",
}

register(OpDef(
    name="gelu", doc="GELU; approximate: none (erf) or tanh (gelu_new / gelu_pytorch_tanh)",
    operands=("x",), attrs=(Attr("approximate", "enum", default="none", choices=("none", "tanh")),),
    infer=_same, emit=_gelu_emit, fusion="elementwise",
    triton=lambda attrs: _GELU_TRITON.get(attrs["approximate"]),
    shape_doc=SAME_DOC, example="h: {op: gelu, x: h, approximate: tanh}"))


register(OpDef(
    name="softcap", doc="tanh(x / cap) * cap (logit soft-capping); x unchanged when cap is null", operands=("x",),
    attrs=(Attr("cap", "expr", required=True, doc="the cap, or null for none"),), infer=_same,
    emit=lambda e: f"ops.softcap({e['x']}, {e.a('cap')})", fusion="elementwise", run="softcap",
    # a cap that only the config decides may be null at run time, which no kernel can take
    triton=lambda a: None if a["cap"] is None or not isinstance(a["cap"], (int, float))
    else "(2.0 * tl.sigmoid(2.0 * {x} / {cap}) - 1.0) * {cap}",
    shape_doc=SAME_DOC, example="logits: {op: softcap, x: logits, cap: final_logit_softcapping}"))


def _pow_triton(a) -> str | None:
    """Exponents with an exact short form; others stay on the PyTorch path."""
    e = a.get("exponent")
    if isinstance(e, bool) or not isinstance(e, (int, float)):
        return None
    if e == int(e) and 1 <= e <= 4:
        return " * ".join(["{x}"] * int(e))
    return {0.5: "tl.sqrt_rn({x})", -1: "tl.div_rn(1.0, {x})", -0.5: "tl.math.rsqrt({x})"}.get(e)


register(OpDef(
    name="pow", doc="x ** exponent, the exponent a config expression", operands=("x",),
    attrs=(Attr("exponent", "expr", required=True),), infer=_same,
    emit=lambda e: f"torch.pow({e['x']}, {e.a('exponent')})", fusion="elementwise", triton=_pow_triton,
    shape_doc=SAME_DOC, example="sq: {op: pow, x: h, exponent: 2}"))


def _clamp_infer(ctx) -> list[TType]:
    if ctx.attr("min") is None and ctx.attr("max") is None:
        raise ShapeError("give 'min', 'max' or both")
    return _numeric(ctx)


def _clamp_emit(e) -> str:
    bounds = [f"{b}={e.a(b)}" for b in ("min", "max") if e.const(b) is not None]
    return f"torch.clamp({', '.join([e['x'], *bounds])})"


def _clamp_triton(a) -> str | None:
    # a bound the config decides may be null at run time, which no kernel scalar can take
    if any(a.get(b) is not None and not isinstance(a.get(b), (int, float)) for b in ("min", "max")):
        return None
    expr = "{x}"
    for bound, fn in (("min", "maximum"), ("max", "minimum")):
        if a.get(bound) is not None:     # NaN stays NaN, as in torch.clamp
            expr = f"tl.{fn}({expr}, {{{bound}}}, propagate_nan=tl.PropagateNan.ALL)"
    return expr


register(OpDef(
    name="clamp", doc="x limited to [min, max]; either bound may be left out (null)", operands=("x",),
    attrs=(Attr("min", "expr", doc="the lower bound, or null"), Attr("max", "expr", doc="the upper bound, or null")),
    infer=_clamp_infer, emit=_clamp_emit, fusion="elementwise", triton=_clamp_triton,
    shape_doc=SAME_DOC + " (float or int); at least one bound", example="w: {op: clamp, x: w, min: 0, max: 1}"))


CAST_TARGETS = ("float", "fp32", "int", "bool")
_CAST_EMIT = {"float": "{x}.to(ctx.dtype)", "fp32": "{x}.float()", "int": "{x}.long()", "bool": "{x}.bool()"}
# {dtype}: the kernel's model dtype (its float inputs'), so a cast to it rounds as torch's would
_CAST_TRITON = {"float": "({x}).to({dtype}).to(tl.float32)", "fp32": "({x}).to(tl.float32)", "bool": "{x} != 0"}


def _cast_infer(ctx) -> list[TType]:
    return [TType(ctx["x"].shape, ctx.attr("to").evaluate({}))]


register(OpDef(
    name="cast", doc="x converted to a dtype class: float (the model's dtype), fp32 (float32 whatever the model's "
                     "dtype, for precision-sensitive steps), int (int64) or bool (x != 0)",
    operands=("x",), attrs=(Attr("to", "enum", required=True, choices=CAST_TARGETS),), infer=_cast_infer,
    context=True, emit=lambda e: _CAST_EMIT[e.const("to")].format(x=e["x"]), fusion="elementwise",
    triton=lambda a: _CAST_TRITON.get(a["to"]),
    shape_doc="the shape of x, in the dtype class `to`", example="logits: {op: cast, x: logits, to: fp32}"))


register(OpDef(
    name="dropout", doc="zeroes each element with probability p and scales the rest by 1 / (1 - p) while the "
                        "model trains (the forward context says so); the identity in evaluation or when p is 0 or null",
    operands=("x",), attrs=(Attr("p", "expr", required=True, doc="the drop probability (a config rate), or null"),),
    infer=_same, run="dropout", emit=lambda e: f"ops.dropout({e['x']}, ctx, {e.a('p')})",
    # Reads ctx.training. A fused group holding it takes the context, and its kernel runs only outside
    # training (runtime/kernels.py), where dropout is the identity: so its Triton form is x itself.
    context=True, fusion="elementwise", triton="{x}",
    shape_doc=SAME_DOC, example="h: {op: dropout, x: h, p: hidden_dropout_prob}"))
