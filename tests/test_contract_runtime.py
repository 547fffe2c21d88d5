"""The runtime contract at run time: a padding mask per input sequence, float inputs of any name, key
positions supplied over cached keys, and a spec declaring its contract (v2 syntax, any names)
computing what its v1 form computes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import runtime
from compiler.pipeline import compile_spec
from tests.family_parity import TOL, random_ids
from tests.hf_checkpoints import randomize, save
from tests.test_llama_parity import BASE as LLAMA_BASE

transformers = pytest.importorskip("transformers")


def spec_file(tmp_path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


# -- a padding mask per sequence ------------------------------------------------------------------
T5 = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
          relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0,
          pad_token_id=0, eos_token_id=1, feed_forward_proj="relu")


def test_t5_masks_its_source_and_its_decoder_input_each_with_their_own_mask(tmp_path):
    ref = randomize(transformers.T5ForConditionalGeneration(transformers.T5Config(**T5)))
    ours = runtime.from_pretrained(save(ref, tmp_path / "t5"))
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(2, 99, (2, 12), generator=gen)
    src_mask = torch.ones_like(src)
    src_mask[1, -5:] = 0                      # the second source right-padded
    dec = torch.randint(2, 99, (2, 7), generator=gen)
    dec_mask = torch.ones_like(dec)
    dec_mask[0, :3] = 0                       # the first decoder input left-padded
    with torch.no_grad():
        want = ref(input_ids=src, attention_mask=src_mask, decoder_input_ids=dec,
                   decoder_attention_mask=dec_mask).logits
    got = ours(src, attention_mask=src_mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits
    real = dec_mask.bool()
    assert (got[real] - want[real]).abs().max().item() <= TOL
    # the decoder mask is applied (not only the source's): without it the first row's real tokens change
    unmasked = ours(src, attention_mask=src_mask, decoder_input_ids=dec).logits
    assert (unmasked[0, 3:] - got[0, 3:]).abs().max().item() > 1e-3
    assert (unmasked[1] - got[1]).abs().max().item() == 0.0


# -- a float input besides pixel_values -----------------------------------------------------------
FEATURES = """
spec: 1
name: features
config:
  d: {hf: d, type: int}
  heads: {hf: heads, type: int}
blocks: {}
model:
  inputs:
    frames: {shape: [B, T, d], mask: frames_mask}
  params:
    q: {linear: [d, d]}
    k: {linear: [d, d]}
    v: {linear: [d, d]}
  graph:
    - qh: {op: linear, x: frames, w: q}
    - kh: {op: linear, x: frames, w: k}
    - vh: {op: linear, x: frames, w: v}
    - qh: {op: split_heads, x: qh, heads: heads}
    - kh: {op: split_heads, x: kh, heads: heads}
    - vh: {op: split_heads, x: vh, heads: heads}
    - y:  {op: attention, q: qh, k: kh, v: vh, causal: false}
    - encoded: {op: merge_heads, x: y}
  outputs: [encoded]
weights:
  - {from: "{p}.{t}", to: "{p}.{t}"}
"""


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_float_input_of_any_name_is_cast_to_the_model_dtype_and_masked_by_its_own_mask(tmp_path, dtype):
    # unfused, so the test can compute the same from the q, k, v params
    artifact = compile_spec(spec_file(tmp_path, "features", FEATURES), tmp_path / "art", {"fuse": False}).directory
    contract = json.loads((artifact / "interface.json").read_text())["contract"]
    assert contract["inputs"] == [{"name": "frames", "dtype": "float", "shape": ["B", "T", "d"], "source": "caller",
                                   "seq": "T"}]
    assert contract["masks"] == {"frames_mask": "T"} and contract["generate"] is None
    model = runtime.init_random(artifact, {"d": 16, "heads": 2}, dtype=dtype)
    frames = torch.randn(2, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = model(frames, frames_mask=mask).encoded
    assert got.dtype == dtype
    net, x = model.net, frames.to(dtype)
    q, k, v = (getattr(net, n)(x).unflatten(-1, (2, -1)).transpose(1, 2) for n in "qkv")
    keep = mask.bool()[:, None, None, :]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).flatten(2)
    torch.testing.assert_close(got, want, **({} if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)))
    # padded frames change nothing the real ones compute
    noisy = frames.clone()
    noisy[1, 3:] = 100.0
    torch.testing.assert_close(model(noisy, frames_mask=mask).encoded[1, :3], got[1, :3], rtol=0, atol=0)
    with pytest.raises(TypeError, match="input frames takes a float tensor"):
        model(torch.ones(2, 5, 16, dtype=torch.long))
    with pytest.raises(TypeError, match="takes no attention_mask"):
        model(frames, attention_mask=mask)


# -- key positions over cached keys ----------------------------------------------------------------
KEY_BIAS = """
spec: 1
name: key_bias
config:
  vocab: {hf: vocab_size, type: int}
  d: {hf: hidden_size, type: int}
  heads: {hf: num_heads, type: int}
  hd: {hf: head_dim, type: int}
  max_pos: {hf: max_positions, type: int}
blocks: {}
model:
  inputs:
    tokens: {shape: [B, S], dtype: int, mask: tokens_mask}
    keys_at: {shape: [B, K], dtype: int, supplied: key_positions}
  params:
    embed: {embedding: [vocab, d]}
    q: {linear: [d, heads * hd]}
    k: {linear: [d, heads * hd]}
    v: {linear: [d, heads * hd]}
    o: {linear: [heads * hd, d]}
    key_bias: {embedding: [max_pos, heads]}
    head: {linear: [d, vocab]}
  graph:
    - x:  {op: embedding, ids: tokens, w: embed}
    - qh: {op: linear, x: x, w: q}
    - kh: {op: linear, x: x, w: k}
    - vh: {op: linear, x: x, w: v}
    - qh: {op: split_heads, x: qh, heads: heads}
    - kh: {op: split_heads, x: kh, heads: heads}
    - vh: {op: split_heads, x: vh, heads: heads}
    # a bias on each key from its position among the real tokens: [B, heads, 1, K]
    - b:  {op: embedding, ids: keys_at, w: key_bias}
    - b:  {op: split_heads, x: b, heads: heads}
    - b:  {op: transpose, x: b, dim0: 2, dim1: 3}
    - y:  {op: attention, q: qh, k: kh, v: vh, bias: b, causal: true}
    - y:  {op: merge_heads, x: y}
    - y:  {op: linear, x: y, w: o}
    - x:  {op: add, a: x, b: y}
    - scores: {op: linear, x: x, w: head}
  outputs: [scores]
  generate: {tokens: tokens, logits: scores}
weights:
  - {from: "{p}.{t}", to: "{p}.{t}"}
"""


def test_a_bias_from_key_positions_is_right_at_every_cached_decoding_step(tmp_path):
    artifact = compile_spec(spec_file(tmp_path, "key_bias", KEY_BIAS), tmp_path / "art").directory
    contract = json.loads((artifact / "interface.json").read_text())["contract"]
    assert contract["inputs"][1] == {"name": "keys_at", "dtype": "int", "shape": ["B", "K"],
                                     "source": "key_positions", "seq": "S", "below": ["max_pos"]}
    model = runtime.init_random(artifact, {"vocab_size": 23, "hidden_size": 16, "num_heads": 2, "head_dim": 8,
                                           "max_positions": 32},
                                seed=1)
    prompt = torch.randint(0, 23, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(prompt)
    mask[0, :2] = 0                           # the first prompt left-padded
    new = 10
    out = model.generate(prompt, tokens_mask=mask, max_new_tokens=new)
    assert len(set(out[1, 6:].tolist())) > 1, "a constant continuation would not exercise the bias"
    full_mask = torch.cat([mask, torch.ones(2, new, dtype=mask.dtype)], dim=1)
    for step in range(new):
        n = 6 + step
        uncached = model(out[:, :n], tokens_mask=full_mask[:, :n]).scores[:, -1]
        assert out[:, n].tolist() == uncached.argmax(-1).tolist(), f"step {step}"
    # the bias matters: the same model without it picks other tokens somewhere
    with torch.no_grad():
        model.net.key_bias.weight.zero_()
    assert model.generate(prompt, tokens_mask=mask, max_new_tokens=new).tolist() != out.tolist()


# -- v2 declarations equal the v1 table -------------------------------------------------------------
def v2_llama(tmp_path) -> Path:
    """specs/llama.yaml with its contract declared and every model input, mask and output renamed."""
    text = Path("specs/llama.yaml").read_text()
    for old, new in [("input_ids:    {shape: [B, S], dtype: int}", "tokens: {shape: [B, S], dtype: int, mask: pad}"),
                     ("position_ids: {shape: [B, S], dtype: int}", "where: {shape: [B, S], dtype: int, supplied: positions}"),
                     ("ids: input_ids,", "ids: tokens,"), ("pos: position_ids,", "pos: where,"),
                     ("- logits:   {op: linear", "- scores: {op: linear"),
                     ("  outputs: [logits]\n", "  outputs: [scores]\n  generate: {tokens: tokens, logits: scores}\n")]:
        assert old in text, old
        text = text.replace(old, new)
    return spec_file(tmp_path, "llama_v2", text)


def test_a_spec_declaring_its_contract_with_its_own_names_computes_what_its_v1_form_does(tmp_path):
    ref = randomize(transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_BASE)))
    folder = save(ref, tmp_path / "ckpt")
    v1 = runtime.load(compile_spec("specs/llama.yaml", tmp_path / "v1").directory, folder)
    v2 = runtime.load(compile_spec(v2_llama(tmp_path), tmp_path / "v2").directory, folder)
    assert v2.contract.masks == {"pad": "S"} and v2.contract.generate.tokens == "tokens"
    x = random_ids(LLAMA_BASE["vocab_size"], batch=2, length=9)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    want = v1(x, attention_mask=mask).logits
    assert torch.equal(v2(tokens=x, pad=mask).scores, want)
    assert torch.equal(v2(x, pad=mask, logits_to_keep=2).scores, want[:, -2:])
    assert v2.generate(x, pad=mask, max_new_tokens=6).tolist() == v1.generate(x, attention_mask=mask, max_new_tokens=6).tolist()


def test_t5_declaring_its_contract_has_the_contract_of_its_v1_form(tmp_path):
    text = Path("specs/t5.yaml").read_text()
    for old, new in [("input_ids:         {shape: [B, S_ENC], dtype: int}",
                      "input_ids:         {shape: [B, S_ENC], dtype: int, mask: attention_mask}"),
                     ("decoder_input_ids: {shape: [B, S], dtype: int}",
                      "decoder_input_ids: {shape: [B, S], dtype: int, mask: decoder_attention_mask}"),
                     ("  outputs: [logits]\n", "  outputs: [logits]\n  generate: {tokens: decoder_input_ids, logits: logits, "
                                               "start: decoder_start_token_id}\n")]:
        assert old in text, old
        text = text.replace(old, new)
    v1 = json.loads((compile_spec("specs/t5.yaml", tmp_path / "v1").directory / "interface.json").read_text())
    v2 = json.loads((compile_spec(spec_file(tmp_path, "t5", text), tmp_path / "v2").directory / "interface.json").read_text())
    assert v2["contract"] == v1["contract"]
    assert (compile_spec(spec_file(tmp_path, "t5", text), tmp_path / "v2").directory / "model.py").read_text() \
        .split("\n", 2)[2] == (compile_spec("specs/t5.yaml", tmp_path / "v1").directory / "model.py").read_text().split("\n", 2)[2]
