"""Rotary position embeddings: the cos/sin table and its application to q or k."""
from __future__ import annotations

import functools
import math

import torch

from runtime.value_checks import ROPE_ALIASES as ALIASES
from runtime.value_checks import ROPE_TYPES
from runtime.context import tracing
from runtime.ops import native_rows


def rope_type(scaling: dict | None) -> str:
    # Transformers 4.x wrote `type`, later 4.x and 5.x write `rope_type`; 5.x keeps theta in the same dict.
    if not scaling:
        return "default"
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    kind = ALIASES.get(kind, kind)
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope scaling type '{kind}' is not supported (supported: {', '.join(ROPE_TYPES)})")
    return kind


_INV_FREQ: dict[tuple, torch.Tensor] = {}


def rope_inv_freq(dim: int, theta: float, scaling: dict | None, long: bool = False) -> torch.Tensor:
    """Inverse frequencies, computed once per (dim, theta, scaling) and reused by every forward.
    `long`: LongRoPE's set for sequences past the original context (its short set otherwise)."""
    key = (dim, float(theta), repr(sorted((scaling or {}).items())), long)
    cached = _INV_FREQ.get(key)
    if cached is not None and not tracing():
        return cached
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    kind = rope_type(scaling)
    if kind == "linear":
        inv = inv / scaling["factor"]
    elif kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
        inv = torch.where(medium, smoothed, scaled)
    elif kind == "longrope":
        factors = scaling["long_factor" if long else "short_factor"]
        if len(factors) != dim // 2:
            raise ValueError(f"longrope: {'long' if long else 'short'}_factor has {len(factors)} entries, "
                             f"the rotary dim {dim} needs {dim // 2}")
        inv = 1.0 / (torch.tensor(factors, dtype=torch.float32) * theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if not tracing():     # a traced tensor (fake, symbolic) must not outlive its trace
        _INV_FREQ[key] = inv
    return inv


def _longrope(scaling: dict, pos: torch.Tensor, max_positions, original_max_positions) -> tuple[bool, float]:
    """(use the long factors?, the cos/sin scale) as Transformers decides them at each forward: long
    once a position of this call reaches past the original context; keys already cached keep theirs."""
    original = scaling.get("original_max_position_embeddings") or original_max_positions
    if not original:
        raise ValueError("longrope needs original_max_position_embeddings (in the scaling dict or the config)")
    factor = scaling.get("factor")
    if factor is None:
        if not max_positions:
            raise ValueError("longrope needs a factor or max_position_embeddings")
        factor = max_positions / original
    scale = scaling.get("attention_factor")
    if scale is None:
        scale = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return int(pos.max()) + 1 > original, scale


def rope_table(pos: torch.Tensor, ctx, dim: int, theta: float, scaling: dict | None = None,
               max_positions: int | None = None, original_max_positions: int | None = None, seq: str | None = None):
    """cos and sin of shape [B, S, dim] in the half-split layout, in the model's dtype, for the
    positions `pos` of sequence `seq`."""
    long, scale = False, 1.0
    if rope_type(scaling) == "longrope":
        long, scale = _longrope(scaling, pos, max_positions, original_max_positions)
        cache = ctx.seq(seq).cache
        if cache is not None:
            # Keys cached with the short factors do not fit the long ones; Transformers recomputes them too.
            cache.regime(("longrope", dim), long)
    inv = rope_inv_freq(dim, theta, scaling, long).to(pos.device)
    freqs = pos[..., None].float() * inv
    emb = torch.cat((freqs, freqs), dim=-1)
    if scale != 1.0:
        return (emb.cos() * scale).to(ctx.dtype), (emb.sin() * scale).to(ctx.dtype)
    return emb.cos().to(ctx.dtype), emb.sin().to(ctx.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate x [B, H, S, D] by the table [B, S, R], R <= D (partial rotary leaves the rest as is).
    Half layout: dim i turns with dim i + R/2; interleaved: dims 2i and 2i + 1 turn together, by the
    table's i-th frequency (its first half, each entry used twice)."""
    if not interleaved:
        few = native_rows.rope(x, cos, sin)      # partial rotary included
        if few is not None:
            return few
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return torch.cat((rope(x[..., :rot], cos[:, 0], sin[:, 0], interleaved), x[..., rot:]), dim=-1)
    if interleaved:
        cos = cos[..., : rot // 2].repeat_interleave(2, -1)
        sin = sin[..., : rot // 2].repeat_interleave(2, -1)
        pairs = x.unflatten(-1, (-1, 2))
        return x * cos + torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2) * sin
    # rotate_half(x) * sin == roll(x, rot/2) * (±sin): the same products, bit for bit (a sign flip is
    # exact), in five aten ops instead of nine, which counts in a decode step.
    signs = _signs(rot, sin.dtype, sin.device) if tracing() else _half_signs(rot, sin.dtype, sin.device)
    return x * cos + x.roll(rot // 2, -1) * (sin * signs)


@functools.lru_cache(maxsize=64)
def _half_signs(rot: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _signs(rot, dtype, device)


def _signs(rot: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.cat((torch.full((rot // 2,), -1.0), torch.ones(rot - rot // 2))).to(dtype=dtype, device=device)
