"""Scaled dot-product attention over [B, H, S, D] heads, with the KV cache and masks of the context
(run time: runtime/ops/attention.py)."""
from __future__ import annotations

from .registry import Attr, OpDef, Parallel, ShapeError, TType, register


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
    args = [e["q"], e["k"], e["v"], "ctx", e.slot, *e.seq_arg()]
    for name in ("causal", "scale", "window", "softcap", "dropout"):
        if e.given(name):
            args.append(f"{name}={e.a(name)}")
    if "bias" in e.values:
        args.append(f"bias={e['bias']}")
    return f"ops.attention({', '.join(args)})"


register(OpDef(
    name="attention", doc="softmax(q k^T * scale + mask) v, with the KV cache; GQA when k has fewer heads",
    operands=("q", "k", "v", "bias"), optional_operands=("bias",), context=True, fusion="attention",
    kv_cache=True, triton="flash_attention", run="attention", sequence=("k", 2),
    attrs=(Attr("causal", "expr", default=True), Attr("scale", "expr", default=None),
           Attr("window", "expr", default=None, doc="sliding window length, or null"),
           Attr("softcap", "expr", default=None, doc="tanh soft-capping of the scores, or null"),
           Attr("dropout", "expr", default=None, doc="dropout rate of the attention probabilities while training, or null"),
           Attr("encoder_keys", "expr", default=False,
                doc="v1: keys from the encoder's sequence; the compiler checks it against the keys' shape, "
                    "which decides masks and the KV cache")),
    infer=_attention_infer, emit=_attention_emit,
    shape_doc="q [B, H, Sq, D], k and v [B, Hkv, Sk, D] (H a multiple of Hkv; bias [(B,) H, Sq, Sk]) -> [B, H, Sq, Dv]",
    example="y: {op: attention, q: q, k: k, v: v, scale: head_dim ** -0.5}",
    parallel=lambda ranks, attrs: _attention_parallel(ranks)))


def _attention_parallel(ranks: dict) -> Parallel:
    """Heads are independent; k and v may hold fewer heads, each serving a group of q's (GQA)."""
    dims = {"q": {0: 0, 1: 1, 2: 2}, "k": {0: 0, 1: 1}, "v": {0: 0, 1: 1}}
    if "bias" in ranks:
        dims["bias"] = {-3: 1, **({0: 0} if ranks["bias"] == 4 else {})}
    return Parallel(dims=dims, grouped={"k": (1,), "v": (1,)})
