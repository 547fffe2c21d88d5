"""Pointwise primitives: binary arithmetic with broadcasting and activations."""
from __future__ import annotations

from .registry import Attr, OpDef, ShapeError, TType, register


def _broadcast(ctx) -> list[TType]:
    from compiler.symbolic import same_value
    a, b = ctx["a"], ctx["b"]
    if a.dtype != b.dtype:
        raise ShapeError(f"dtype clash: 'a' is {a}, 'b' is {b}")
    ra, rb = list(reversed(a.shape)), list(reversed(b.shape))
    out = []
    for i in range(max(len(ra), len(rb))):
        da = ra[i] if i < len(ra) else None
        db = rb[i] if i < len(rb) else None
        if da is None or (db is not None and _is_one(da)):
            out.append(db)
        elif db is None or _is_one(db) or same_value(da, db):
            out.append(da)
        else:
            raise ShapeError(f"shapes do not broadcast: 'a' is {a}, 'b' is {b}")
    return [TType(tuple(reversed(out)), a.dtype)]


def _is_one(d) -> bool:
    return d.is_constant() and d.evaluate({}) == 1


def _same(ctx) -> list[TType]:
    x = ctx.expect_dtype("x", "float")
    return [x]


def _binary(name: str, symbol: str, doc: str, identity: dict) -> OpDef:
    return register(OpDef(
        name=name, doc=doc, operands=("a", "b"), infer=_broadcast, identity=identity,
        emit=lambda e: f"{e['a']} {symbol} {e['b']}", fusion="broadcast", triton=f"{{a}} {symbol} {{b}}"))


_binary("add", "+", "a + b, broadcasting like torch", {"a": 0.0, "b": 0.0})
_binary("sub", "-", "a - b, broadcasting like torch", {"b": 0.0})
_binary("mul", "*", "a * b, broadcasting like torch", {"a": 1.0, "b": 1.0})

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
    triton=lambda a: "{x} * {by}" if a.get("round_factor") in (False, None) else None))

def _full_like_emit(e) -> str:
    value = e.const("value")
    if value == 0 and not isinstance(value, bool):
        return f"torch.zeros_like({e['x']})"
    return f"torch.full_like({e['x']}, {e.a('value')})"


register(OpDef(
    name="full_like", doc="a tensor shaped like x, every element `value`", operands=("x",),
    attrs=(Attr("value", "expr", required=True),), infer=lambda ctx: [ctx["x"]], emit=_full_like_emit,
    fusion="opaque", internal=True))

register(OpDef(
    name="silu", doc="x * sigmoid(x)", operands=("x",), infer=_same,
    emit=lambda e: f"F.silu({e['x']})", fusion="elementwise", triton="{x} * tl.sigmoid({x})"))

register(OpDef(
    name="relu", doc="max(x, 0)", operands=("x",), infer=_same,
    emit=lambda e: f"F.relu({e['x']})", fusion="elementwise", triton="tl.maximum({x}, 0.0)"))


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
    triton=lambda attrs: _GELU_TRITON.get(attrs["approximate"])))


register(OpDef(
    name="softcap", doc="tanh(x / cap) * cap (logit soft-capping); x unchanged when cap is null", operands=("x",),
    attrs=(Attr("cap", "expr", required=True, doc="the cap, or null for none"),), infer=_same,
    emit=lambda e: f"ops.softcap({e['x']}, {e.a('cap')})", fusion="elementwise", run="softcap",
    # a cap that only the config decides may be null at run time, which no kernel can take
    triton=lambda a: None if a["cap"] is None or not isinstance(a["cap"], (int, float))
    else "(2.0 * tl.sigmoid(2.0 * {x} / {cap}) - 1.0) * {cap}"))



register(OpDef(
    name="dropout", doc="while training, zeroes each element with probability p and scales the rest by "
                        "1 / (1 - p); x unchanged in eval mode or when p is 0 or null",
    operands=("x",), attrs=(Attr("p", "expr", required=True, doc="the drop probability (a config rate), or null"),),
    infer=lambda ctx: [ctx["x"]], emit=lambda e: f"ops.dropout({e['x']}, ctx, {e.a('p')})",
    # Reads ctx.training. A fused group holding it takes the context, and its kernel runs only outside
    # training (runtime/kernels.py), where dropout is the identity: so its Triton form is x itself.
    context=True, fusion="elementwise", triton="{x}", run="dropout"))
