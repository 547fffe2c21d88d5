"""Normalisations over the last dimension (run time: runtime/ops/norms.py)."""
from __future__ import annotations

from .registry import Attr, OpDef, ShapeError, TType, register


def weight_dims(x_shape: tuple, w_shape: tuple) -> tuple[int, ...]:
    """The dims of x (negative, from the end) that the weight's dims scale. Its last is x's last; each
    earlier one is the next dim of x to the left with its size, skipping free dims (B, S), which it is
    broadcast over: a [heads, head_dim] weight scales [B, heads, S, head_dim] per head and position."""
    from compiler.spec import FREE_DIM
    from compiler.symbolic import same_value
    dims, i = [], len(x_shape) - 1
    for k, w in enumerate(reversed(w_shape)):
        while i >= 0 and not same_value(x_shape[i], w) and k > 0 and FREE_DIM.match(str(x_shape[i])):
            i -= 1
        if i < 0 or not same_value(x_shape[i], w):
            what = "the last dim of 'x'" if k == 0 else f"a dim of 'x' left of {list(x_shape)[dims[0]]}"
            raise ShapeError(f"the weight [{', '.join(map(str, w_shape))}] does not fit x "
                             f"[{', '.join(map(str, x_shape))}]: {w} must be {what}")
        dims.insert(0, i - len(x_shape))
        i -= 1
    return tuple(dims)


def _norm_infer(ctx) -> list[TType]:
    x = ctx.expect_dtype("x", "float")
    weight_dims(x.shape, tuple(ctx.param("w").dims.values()))
    return [x]


def _weight_arg(e) -> str:
    """`, dims=(-3, -1)` when the weight has more than one dim (where it sits in x), else nothing."""
    w, x = e.param_decl("w"), e.type("x")
    if w is None or x is None or len(w.dims) == 1:
        return ""
    return f", dims={weight_dims(x.shape, tuple(w.dims.values()))}"


register(OpDef(
    name="rms_norm", doc="x / rms(x) * (offset + w), statistics in fp32; w may have several dims (per-head norms)",
    operands=("x",), params={"w": "norm"},
    attrs=(Attr("eps", "expr", required=True, check="positive"), Attr("offset", "expr", default=0)),
    infer=_norm_infer, fusion="reduction", triton="rms_norm", positionwise=True, run="rms_norm",
    emit=lambda e: (f"ops.rms_norm({e['x']}, {e.p('w')}.weight, {e.a('eps')}{_weight_arg(e)})"
                    if e.const("offset") in (0, None)
                    else f"ops.rms_norm({e['x']}, {e.p('w')}.weight, {e.a('eps')}, offset={e.a('offset')}{_weight_arg(e)})"),
    shape_doc="the shape and dtype of x [..., dim] for a norm param [dim] (or [..., dim] scaling more dims of x)",
    example="h: {op: rms_norm, x: x, w: attn_norm, eps: rms_norm_eps}"))

register(OpDef(
    name="layer_norm", doc="(x - mean) / std * w + b; w and b may have several dims (per-head norms)",
    operands=("x",), params={"w": "norm"},
    attrs=(Attr("eps", "expr", required=True, check="positive"),), infer=_norm_infer, fusion="reduction", triton="layer_norm", positionwise=True,
    run="layer_norm",
    emit=lambda e: f"ops.layer_norm({e['x']}, {e.p('w')}.weight, {e.p('w')}.bias, {e.a('eps')}{_weight_arg(e)})",
    shape_doc="the shape and dtype of x [..., dim] for a norm param [dim] (or [..., dim] scaling more dims of x)",
    example="h: {op: layer_norm, x: x, w: ln_1, eps: layer_norm_epsilon}"))
