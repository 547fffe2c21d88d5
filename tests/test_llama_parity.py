"""specs/llama.yaml against transformers.LlamaForCausalLM on tiny random checkpoints."""
from __future__ import annotations

import pytest
import torch

import runtime
from compiler.pipeline import compile_spec
from tests.family_parity import assert_greedy_tokens_match, max_logit_diff, random_ids
from tests.hf_checkpoints import as_transformers_4x, randomize, rewrite_config, save

transformers = pytest.importorskip("transformers")

TOL = 1e-4
BASE = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
            bos_token_id=1, eos_token_id=2)
CONFIGS = {
    "mha": {},
    "gqa": dict(num_key_value_heads=2),
    "mqa_tied": dict(num_key_value_heads=1, tie_word_embeddings=True),
    "explicit_head_dim": dict(head_dim=16, num_key_value_heads=2),
    "llama3_rope": dict(num_key_value_heads=2, rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16)),
    "linear_rope": dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0)),
    "biases": dict(attention_bias=True, mlp_bias=True, num_key_value_heads=2),
}


@pytest.fixture(scope="module", params=["fused", "unfused"])
def artifact(request, tmp_path_factory):
    """Every parity test runs on the fused compile and on the `--no-fuse` one."""
    options = {"fuse": request.param == "fused"}
    return compile_spec("specs/llama.yaml", tmp_path_factory.mktemp("art") / "llama", options).directory


def make(tmp_path, name, seed=0, **save_kwargs):
    config = transformers.LlamaConfig(**{**BASE, **CONFIGS[name]})
    model = randomize(transformers.LlamaForCausalLM(config), seed)
    return model, save(model, tmp_path / name, **save_kwargs)


def ids(batch=2, length=11, seed=0):
    return random_ids(BASE["vocab_size"], batch, length, seed)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_greedy_tokens_match_transformers(tmp_path, artifact, name):
    ref, folder = make(tmp_path, name)
    ours = runtime.load(artifact, folder)
    assert max_logit_diff(ref, ours, ids()) <= TOL
    assert_greedy_tokens_match(ref, ours, ids(batch=1, length=6, seed=1))


def test_from_pretrained_loads_a_sharded_checkpoint(tmp_path):
    ref, folder = make(tmp_path, "gqa", max_shard_size="30KB")
    assert (folder / "model.safetensors.index.json").exists()
    ours = runtime.from_pretrained(folder)
    x = ids()
    with torch.no_grad():
        assert (ours(x).logits - ref(x).logits).abs().max().item() <= TOL


def test_transformers_4x_config_keys_give_the_same_model(tmp_path, artifact):
    ref, folder = make(tmp_path, "linear_rope")
    rewrite_config(folder, as_transformers_4x)
    ours = runtime.load(artifact, folder, dtype="auto")
    assert ours.config["rope_type"] == "linear" and ours.config["rope_scaling"]["factor"] == 2.0
    x = ids()
    with torch.no_grad():
        assert (ours(x).logits - ref(x).logits).abs().max().item() <= TOL


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_gives_each_row_its_unpadded_logits(tmp_path, artifact, side):
    ref, folder = make(tmp_path, "gqa")
    ours = runtime.load(artifact, folder)
    x = ids(batch=2, length=9)
    mask = torch.ones_like(x)
    pad = 4
    if side == "left":
        mask[1, :pad] = 0
        real = slice(pad, None)
    else:
        mask[1, -pad:] = 0
        real = slice(None, -pad)
    batched = ours(x, attention_mask=mask).logits
    alone = ours(x[1:, real]).logits
    assert (batched[1:, real] - alone).abs().max().item() <= TOL
    assert (batched[0] - ours(x[:1]).logits[0]).abs().max().item() <= TOL
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = ref(x, attention_mask=mask, position_ids=positions).logits
    assert (batched[1:, real] - expected[1:, real]).abs().max().item() <= TOL


def test_left_padded_batch_generates_like_transformers(tmp_path, artifact):
    ref, folder = make(tmp_path, "gqa")
    ours = runtime.load(artifact, folder)
    x = ids(batch=2, length=7, seed=3)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    x[0, :3] = 0
    want = ref.generate(x, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    have = ours.generate(x, attention_mask=mask, max_new_tokens=20, eos_token_id=None)
    assert have.tolist() == want.tolist()
    alone = ours.generate(x[:1, 3:], max_new_tokens=20, eos_token_id=None)
    assert have[0, 3:].tolist() == alone[0].tolist()


def test_generation_stops_at_the_end_token_like_transformers(tmp_path, artifact):
    ref, folder = make(tmp_path, "mha")
    ours = runtime.load(artifact, folder)
    prompt = ids(batch=2, length=5, seed=4)
    free = ours.generate(prompt, max_new_tokens=12, eos_token_id=None)
    eos = int(free[0, 8])   # a token row 0 really produces, so the stop is exercised
    want = ref.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0)
    have = ours.generate(prompt, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    assert have.tolist() == want.tolist()


def test_bfloat16_load_tracks_the_fp32_reference(tmp_path, artifact):
    ref, folder = make(tmp_path, "gqa")
    ours = runtime.load(artifact, folder, dtype=torch.bfloat16)
    assert ours.net.embed.weight.dtype == torch.bfloat16
    x = ids()
    with torch.no_grad():
        expected = ref(x).logits
    assert (ours(x).logits.float() - expected).abs().max().item() < 0.1
