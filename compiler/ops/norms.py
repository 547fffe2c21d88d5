"""Normalisations over the last dimension."""
from __future__ import annotations

from compiler.lazy_import import LazyModule

from .registry import Attr, OpDef, TType, register

# Imported on first use, not here: the compiler reads this module and must not pay torch's import.
torch = LazyModule("torch", globals())
F = LazyModule("torch.nn.functional", globals(), "F")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0) -> torch.Tensor:
    if x.dtype == torch.float32 and not offset:
        # one aten op instead of seven, same arithmetic (rsqrt of the mean square, then the weight)
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    # Statistics in fp32 whatever the input dtype, as every reference implementation does.
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if offset:
        # (offset + w) is applied in fp32 before the cast back (Gemma's order of operations).
        return (h * (offset + weight.float())).to(x.dtype)
    # Llama's order: cast back first, then scale, so bf16 results round like the reference.
    return weight * h.to(x.dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _norm_infer(ctx) -> list[TType]:
    x = ctx.expect_dtype("x", "float")
    w = ctx.param("w")
    ctx.expect_same(x.shape[-1], w.dims["dim"], f"last dim of 'x' must equal the size of '{w.name}'")
    return [x]


register(OpDef(
    name="rms_norm", doc="x / rms(x) * (offset + w), statistics in fp32", operands=("x",),
    params={"w": "norm"},
    attrs=(Attr("eps", "expr", required=True), Attr("offset", "expr", default=0)),
    infer=_norm_infer, fusion="reduction", triton="rms_norm", positionwise=True,
    emit=lambda e: (f"ops.rms_norm({e['x']}, {e.p('w')}.weight, {e.a('eps')})" if e.const("offset") in (0, None)
                    else f"ops.rms_norm({e['x']}, {e.p('w')}.weight, {e.a('eps')}, offset={e.a('offset')})")))

register(OpDef(
    name="layer_norm", doc="(x - mean) / std * w + b", operands=("x",), params={"w": "norm"},
    attrs=(Attr("eps", "expr", required=True),), infer=_norm_infer, fusion="reduction", triton="layer_norm", positionwise=True,
    emit=lambda e: f"ops.layer_norm({e['x']}, {e.p('w')}.weight, {e.p('w')}.bias, {e.a('eps')})"))
