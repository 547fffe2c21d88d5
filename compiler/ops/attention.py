"""Scaled dot-product attention over [B, H, S, D] heads, with the KV cache and masks of the context."""
from __future__ import annotations

from compiler.lazy_import import LazyModule

from .registry import Attr, OpDef, ShapeError, TType, register

# Imported on first use, not here: the compiler reads this module and must not pay torch's import.
torch = LazyModule("torch", globals())
F = LazyModule("torch.nn.functional", globals(), "F")


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


def _attention_infer(ctx) -> list[TType]:
    from compiler.symbolic import same_value
    q, k, v = (ctx.expect_rank(n, 4) for n in ("q", "k", "v"))
    ctx.expect_same(q.shape[3], k.shape[3], "head dims of 'q' and 'k' must agree")
    ctx.expect_same(k.shape[1], v.shape[1], "'k' and 'v' must have the same number of heads")
    if not same_value(q.shape[1], k.shape[1]):
        # Grouped-query attention is legal only when kv heads divide q heads; that is a config
        # check (values unknown here), so only its form is checked.
        pass
    if q.dtype != "float" or k.dtype != "float" or v.dtype != "float":
        raise ShapeError("q, k and v must be float tensors")
    if "bias" in ctx.inputs:
        b = ctx.expect_rank("bias", (3, 4))
        ctx.expect_same(b.shape[-3], q.shape[1], "'bias' must have one [Sq, Sk] plane per head of 'q'")
    return [TType(q.shape[:3] + (v.shape[3],))]


def _attention_emit(e) -> str:
    args = [e["q"], e["k"], e["v"], "ctx", e.slot]
    for name in ("causal", "scale", "window", "softcap"):
        if e.given(name):
            args.append(f"{name}={e.a(name)}")
    if "bias" in e.values:
        args.append(f"bias={e['bias']}")
    if e.const("encoder_keys") not in (None, False):
        args.append(f"encoder_keys={e.a('encoder_keys')}")
    return f"ops.attention({', '.join(args)})"


register(OpDef(
    name="attention", doc="softmax(q k^T * scale + mask) v, with the KV cache; GQA when k has fewer heads",
    operands=("q", "k", "v", "bias"), optional_operands=("bias",), context=True, fusion="attention",
    kv_cache=True, sequence=("k", 2),
    triton="flash_attention",
    attrs=(Attr("causal", "expr", default=True), Attr("scale", "expr", default=None),
           Attr("window", "expr", default=None, doc="sliding window length, or null"),
           Attr("softcap", "expr", default=None, doc="tanh soft-capping of the scores, or null"),
           Attr("encoder_keys", "expr", default=False,
                doc="keys from the encoder's sequence: its padding masks them, no KV cache")),
    infer=_attention_infer, emit=_attention_emit))
