"""Convolution: a ViT patch embedding is a conv whose stride equals its kernel."""
from __future__ import annotations

from .registry import Attr, OpDef, ShapeError, TType, register


def _conv2d_infer(ctx) -> list[TType]:
    from compiler.symbolic import same_value
    from runtime.expr import parse_expr
    x = ctx.expect_rank("x", 4)
    if x.dtype != "float":
        raise ShapeError(f"'x' must be a float tensor, got {x}")
    w = ctx.param("w")
    ctx.expect_same(x.shape[1], w.dims["in"], f"channels of 'x' must equal the input channels of '{w.name}'")
    k, stride = w.dims["kernel"], ctx.attr("stride")
    out = []
    for size in x.shape[2:]:
        # Non-overlapping patches (stride == kernel) give size // kernel for every size >= kernel.
        out.append(parse_expr(f"({size}) // ({k})") if same_value(k, stride)
                   else parse_expr(f"(({size}) - ({k})) // ({stride}) + 1"))
    return [TType((x.shape[0], w.dims["out"], *out))]


register(OpDef(
    name="conv2d", doc="2-d convolution over [B, C, H, W] without padding (patch embeddings)",
    operands=("x",), params={"w": "conv2d"}, attrs=(Attr("stride", "expr", default=1),),
    infer=_conv2d_infer, fusion="opaque",
    emit=lambda e: f"F.conv2d({e['x']}, {e.p('w')}.weight, {e.p('w')}.bias, stride={e.a('stride')})"))
