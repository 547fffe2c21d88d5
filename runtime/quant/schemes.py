"""Weight-only quantization schemes: how a float weight [N, K] becomes packed integers and scales.

Rows are output channels (a linear's `weight` is [out, in]; an embedding's rows are its tokens), K is
the reduction dimension. Everything is computed in fp32 from the weight upcast to fp32; `round` is
round-half-to-even (torch.round); divisions are IEEE fp32 divisions.

int8, symmetric, one scale per output channel (`Scheme("int8")`):
    amax[n]  = max_k |w[n, k]|
    scale[n] = amax[n] / 127                                   stored fp32, shape [N]
    q[n, k]  = clamp(round(w[n, k] / scale[n]), -127, 127)     stored int8, shape [N, K]
    w'[n, k] = q[n, k] * scale[n]
    (a row of zeros has scale 0 and q 0.)

int4, group-wise along K, groups of `group` consecutive columns (32, 64 or 128; K % group == 0).
The scale is rounded to fp16 first and q computed against that stored value, so dequantizing the
stored numbers is exactly the function the quantizer rounded to.
  symmetric (`Scheme("int4", group, symmetric=True)`), zero point fixed at 8:
    m[n, g]     = the group's value of largest magnitude, with its sign (the first one on a tie)
    scale[n, g] = fp16(m[n, g] / -8)                            stored fp16, shape [N, K / group]
    q[n, k]     = clamp(round(w[n, k] / scale[n, g]), -8, 7) + 8     in 0..15
    w'[n, k]    = (q[n, k] - 8) * scale[n, g]
    The extreme lands on level -8 and the scale takes its sign (negative when the extreme is
    positive), so all 16 levels are used: a step of |m| / 8 instead of |m| / 7 (GGML's q4_0
    rounds this way). Measured on tools/bench.py's random 12-layer model, logits cosine with fp32
    0.946 against 0.928 for |m| / 7.
  asymmetric (`Scheme("int4", group, symmetric=False)`), an integer zero point per group:
    lo[n, g] = min(0, min over the group of w),  hi[n, g] = max(0, max over the group of w)
               (the range always holds 0, so 0 is exact and the zero point fits 0..15)
    scale[n, g] = fp16((hi - lo) / 15)                          stored fp16, shape [N, K / group]
    zero[n, g]  = clamp(round(-lo / scale[n, g]), 0, 15)        stored uint8, shape [N, K / group]
    q[n, k]     = clamp(round(w[n, k] / scale[n, g]) + zero[n, g], 0, 15)
    w'[n, k]    = (q[n, k] - zero[n, g]) * scale[n, g]
  (a group whose scale is 0, all zeros or below fp16's range, gets q = zero point: w' = 0.)
  Packing: two values per byte along K, qweight uint8 [N, K / 2]; byte j of a row holds column 2j in
  its low nibble and column 2j + 1 in its high nibble (GPTQ's order within a byte).

int8 activations (a scheme with act_bits 8: `w8a8`, `w4a8`): before the product each activation row is
cut into blocks of 32 columns (config.ACT_BLOCK) and each block quantized as an int8 weight row is,
d = amax / 127, xq = clamp(round(x / d), -127, 127); the product is then x' @ w'.T with x' = xq * d
(`quantize_activations`), computed by the kernels as integer dot products scaled once per block.

Dequantized weights w' are computed in fp32: (q - zero) is an exact small integer and one
multiplication by the fp32 value of the scale rounds once.
"""
from __future__ import annotations

import torch

from runtime.quant.config import ACT_BLOCK, Scheme

FP16_MAX = 65504.0


def quantize(weight: torch.Tensor, scheme: Scheme, what: str = "weight",
             row_amax: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The stored tensors of `weight` [N, K] under `scheme` (see the module docstring).

    `row_amax` [N] (int8): each row's largest magnitude when `weight` holds only some of its rows'
    columns (a rank's slice of a row-parallel linear): the scales are then the whole rows'."""
    scheme.check_shape(tuple(weight.shape), what)
    w = weight.detach().to(torch.float32)
    if scheme.kind == "int8":
        scale = (w.abs().amax(dim=1) if row_amax is None else row_amax.to(torch.float32)) / 127
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = torch.round(w / safe[:, None]).clamp_(-127, 127)
        q = torch.where(scale[:, None] == 0, torch.zeros_like(q), q)
        return {"qweight": q.to(torch.int8).contiguous(), "scales": scale.contiguous()}
    n, k = w.shape
    groups = w.view(n, k // scheme.group, scheme.group)
    if scheme.symmetric:
        extreme = groups.gather(2, groups.abs().argmax(dim=2, keepdim=True)).squeeze(2)
        scale = _fp16_scale(extreme / -8, what)
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = torch.full_like(scale, 8)
        q = torch.round(groups / safe[..., None]).clamp_(-8, 7) + 8
    else:
        lo = groups.amin(dim=2).clamp(max=0)
        hi = groups.amax(dim=2).clamp(min=0)
        scale = _fp16_scale((hi - lo) / 15, what)
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = torch.round(-lo / safe).clamp_(0, 15)
        q = (torch.round(groups / safe[..., None]) + zero[..., None]).clamp_(0, 15)
    q = torch.where(scale[..., None] == 0, zero[..., None].expand_as(q), q)
    out = {"qweight": pack_int4(q.view(n, k).to(torch.uint8)), "scales": scale.to(torch.float16).contiguous()}
    if not scheme.symmetric:
        out["zeros"] = zero.to(torch.uint8).contiguous()
    return out


def _fp16_scale(scale: torch.Tensor, what: str) -> torch.Tensor:
    """The scale rounded to fp16, returned as fp32 (the value the stored fp16 holds)."""
    if bool((scale.abs() > FP16_MAX).any()):
        raise ValueError(f"{what}: a group's int4 scale {float(scale.abs().max()):.4g} exceeds fp16's range "
                         f"({FP16_MAX}); weights this large cannot be stored in this format")
    return scale.to(torch.float16).to(torch.float32)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K] of values 0..15 -> uint8 [N, K / 2]: column 2j low nibble, 2j + 1 high."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K / 2] -> uint8 [..., K] of values 0..15 (the inverse of pack_int4)."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)


def dequantize(stored: dict[str, torch.Tensor], scheme: Scheme, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w' [N, K] (computed in fp32, then cast to `dtype`) from the stored tensors.

    Works on any leading rows (an embedding dequantizes only the rows it gathered)."""
    q = stored["qweight"]
    if scheme.kind == "int8":
        return (q.to(torch.float32) * stored["scales"][..., None]).to(dtype)
    values = unpack_int4(q).to(torch.float32)
    *lead, k = values.shape
    groups = values.view(*lead, k // scheme.group, scheme.group)
    zero = stored["zeros"].to(torch.float32) if "zeros" in stored else 8.0
    if isinstance(zero, torch.Tensor):
        zero = zero[..., None]
    w = (groups - zero) * stored["scales"].to(torch.float32)[..., None]
    return w.view(*lead, k).to(dtype)


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """x' = xq * d in fp32 (see the module docstring): what a scheme with int8 activations multiplies
    by the weights. x [..., K] with K a multiple of ACT_BLOCK."""
    k = x.shape[-1]
    blocks = x.detach().to(torch.float32).reshape(-1, ACT_BLOCK)
    stored = quantize(blocks, Scheme("int8"), "activations")
    return dequantize(stored, Scheme("int8")).view(*x.shape[:-1], k)
