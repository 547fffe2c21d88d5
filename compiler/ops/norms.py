"""Normalisations over the last dimension (run time: runtime/ops/norms.py)."""
from __future__ import annotations

from .registry import Attr, OpDef, TType, register


def _norm_infer(ctx) -> list[TType]:
    x = ctx.expect_dtype("x", "float")
    w = ctx.param("w")
    ctx.expect_same(x.shape[-1], w.dims["dim"], f"last dim of 'x' must equal the size of '{w.name}'")
    return [x]


register(OpDef(
    name="rms_norm", doc="x / rms(x) * (offset + w), statistics in fp32", operands=("x",),
    params={"w": "norm"},
    attrs=(Attr("eps", "expr", required=True), Attr("offset", "expr", default=0)),
    infer=_norm_infer, fusion="reduction", triton="rms_norm", positionwise=True, run="rms_norm",
    emit=lambda e: (f"ops.rms_norm({e['x']}, {e.p('w')}.weight, {e.a('eps')})" if e.const("offset") in (0, None)
                    else f"ops.rms_norm({e['x']}, {e.p('w')}.weight, {e.a('eps')}, offset={e.a('offset')})"),
    shape_doc="the shape and dtype of x [..., dim] for a norm param of size dim", example="h: {op: rms_norm, x: x, w: attn_norm, eps: rms_norm_eps}"))

register(OpDef(
    name="layer_norm", doc="(x - mean) / std * w + b", operands=("x",), params={"w": "norm"},
    attrs=(Attr("eps", "expr", required=True),), infer=_norm_infer, fusion="reduction", triton="layer_norm", positionwise=True,
    run="layer_norm",
    emit=lambda e: f"ops.layer_norm({e['x']}, {e.p('w')}.weight, {e.p('w')}.bias, {e.a('eps')})",
    shape_doc="the shape and dtype of x [..., dim] for a norm param of size dim", example="h: {op: layer_norm, x: x, w: ln_1, eps: layer_norm_epsilon}"))
