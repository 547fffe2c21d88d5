"""Scaled dot-product attention over [B, H, S, D] heads, with the KV cache and masks of the context."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime.ops import native_rows


def attention(q, k, v, ctx, slot, *, seq: str | None = None, causal: bool = True, scale: float | None = None,
              window: int | None = None, softcap: float | None = None, bias: torch.Tensor | None = None,
              dropout: float | None = None) -> torch.Tensor:
    """q: [B, H, Sq, D]; k, v: [B, Hkv, Sk, D] with H a multiple of Hkv (grouped-query attention).

    `seq` is the model-level sequence the keys run along: its padding masks them, and when it is the
    sequence being generated, the context's KV cache appends k and v at `slot` (this op's place,
    its module) and hands back every key so far. `bias` ([H, Sq, Sk] or [B, H, Sq, Sk]) is added
    to the scores (relative position biases); at a decode step it may run over the whole KV cache
    (Sk its capacity: the first past + 1 keys are read). `dropout` drops attention probabilities while the model
    trains (ctx.training), as the references' sdpa and eager paths do.
    """
    state = ctx.seq(seq)
    p = dropout if dropout and ctx.training else 0.0
    if (state.cache is not None and q.shape[-2] == 1 and k.shape[-2] == 1
            and not p and not ctx.record_attentions):
        # a decode step: the cache write and the attention as one C call, where it takes the case. The
        # kernel applies the window itself (keys before it are not read), so the mask is the one of
        # every key so far: the same view of the padding at every step, whose replay a recorded step
        # can then take past the window
        mask = ctx.mask(seq, 1, state.past + 1, causal)
        step = native_rows.attention_step(q, k, v, state.cache.buffers(slot, k, v, state.past), state.past, mask,
                                          q.shape[-1] ** -0.5 if scale is None else scale, window, softcap, bias)
        if step is not None:
            return step
    if state.cache is not None:
        k, v = state.cache.update(slot, k, v, state.past)
    if bias is not None and bias.shape[-1] > k.shape[-2]:
        bias = bias[..., :k.shape[-2]]       # laid over the whole cache (sequence.relative_buckets)
    mask = ctx.mask(seq, q.shape[-2], k.shape[-2], causal, window)
    if isinstance(mask, torch.Tensor) and mask.device != q.device:
        mask = mask.to(q.device)     # layers placed on another device than the inputs (device_map)
    gqa = k.shape[1] != q.shape[1]
    if softcap or bias is not None or ctx.record_attentions:
        return _eager_attention(q, k, v, mask, scale, softcap, bias, p, ctx, seq)
    if isinstance(mask, str):  # "causal": square, unpadded, the kernel masks without a tensor
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa, dropout_p=p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa, dropout_p=p)


def _eager_attention(q, k, v, mask, scale, softcap, bias=None, p=0.0, ctx=None, seq=None):
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
    if ctx is not None and ctx.record_attentions:
        ctx.record_attention(seq, probs)
    if p:
        probs = F.dropout(probs, p, training=True)
    return torch.matmul(probs, v)
