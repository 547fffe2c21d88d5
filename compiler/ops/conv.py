"""Convolutions: a ViT patch embedding (a conv2d whose stride equals its kernel) and 1-d convolutions
over [B, C, L] (an audio front end)."""
from __future__ import annotations

from .registry import Attr, OpDef, TType, register


def _conv2d_infer(ctx) -> list[TType]:
    from compiler.symbolic import same_value
    from runtime.expr import parse_expr
    x = ctx.expect_rank("x", 4)
    ctx.expect_dtype("x", "float")
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
    emit=lambda e: f"F.conv2d({e['x']}, {e.p('w')}.weight, {e.p('w')}.bias, stride={e.a('stride')})",
    shape_doc="[B, in, H, W] -> [B, out, (H - kernel) // stride + 1, same for W] for a conv2d param [in, out, kernel]",
    example="patches: {op: conv2d, x: pixel_values, w: patch_embed, stride: patch_size}"))


def _conv1d_infer(ctx) -> list[TType]:
    from runtime.expr import parse_expr
    x = ctx.expect_rank("x", 3)
    ctx.expect_dtype("x", "float")
    w = ctx.param("w")
    ctx.expect_same(x.shape[1], w.dims["in"], f"channels of 'x' must equal the input channels of '{w.name}'")
    k = w.dims["kernel"]
    stride, padding, dilation = (ctx.attr(a) for a in ("stride", "padding", "dilation"))
    length = parse_expr(f"(({x.shape[2]}) + 2 * ({padding}) - ({dilation}) * (({k}) - 1) - 1) // ({stride}) + 1")
    return [TType((x.shape[0], w.dims["out"], length))]


register(OpDef(
    name="conv1d", doc="1-d convolution over [B, C, L] (F.conv1d), with the groups of its param",
    operands=("x",), params={"w": "conv1d"}, infer=_conv1d_infer, fusion="opaque",
    attrs=(Attr("stride", "expr", default=1), Attr("padding", "expr", default=0, doc="zeros added at both ends"),
           Attr("dilation", "expr", default=1)),
    emit=lambda e: (f"F.conv1d({e['x']}, {e.p('w')}.weight, {e.p('w')}.bias, stride={e.a('stride')}, "
                    f"padding={e.a('padding')}, dilation={e.a('dilation')}, groups={e.p('w')}.groups)"),
    shape_doc="[B, in, L] -> [B, out, (L + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1] for a conv1d "
              "param [in, out, kernel]",
    example="h: {op: conv1d, x: input_features, w: conv1, padding: 1}"))
