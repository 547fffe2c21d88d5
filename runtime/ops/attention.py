"""Scaled dot-product attention over [B, H, S, D] heads, with the KV cache and masks of the context."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q, k, v, ctx, slot, *, causal: bool = True, scale: float | None = None,
              window: int | None = None, softcap: float | None = None, bias: torch.Tensor | None = None,
              encoder_keys: bool = False) -> torch.Tensor:
    """q: [B, H, S, D]; k, v: [B, Hkv, S, D] with H a multiple of Hkv (grouped-query attention).

    `slot` names this op's place in the KV cache (its module); the context appends k and v there
    and hands back everything cached so far. `bias` ([H, Sq, Sk] or [B, H, Sq, Sk]) is added to the
    scores (relative position biases). With `encoder_keys` the keys are the encoder's sequence
    (encoder self-attention, cross-attention): masked by the encoder's padding, never cached.
    """
    if ctx.cache is not None and not encoder_keys:
        k, v = ctx.cache.update(slot, k, v, ctx.past_len)
    if encoder_keys:
        mask = ctx.encoder_mask(q.shape[-2], k.shape[-2], causal)
    else:
        mask = ctx.attention_mask(q.shape[-2], k.shape[-2], causal, window)
    gqa = k.shape[1] != q.shape[1]
    if softcap or bias is not None:
        return _eager_attention(q, k, v, mask, scale, softcap, bias)
    if isinstance(mask, str):  # "causal": square, unpadded, the kernel masks without a tensor
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def _eager_attention(q, k, v, mask, scale, softcap, bias=None):
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if bias is not None:
        scores = scores + bias
    if isinstance(mask, str):
        n = scores.shape[-1]
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(probs, v)
