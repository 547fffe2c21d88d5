"""specs/qwen2.yaml (extends llama) against transformers.Qwen2ForCausalLM on tiny random checkpoints."""
from __future__ import annotations

import pytest
import torch

import runtime
from compiler.pipeline import compile_spec
from runtime.errors import ConfigError
from tests.family_parity import (assert_greedy_tokens_match, assert_left_padded_generation_matches,
                                 assert_padded_rows_match, max_logit_diff, random_ids)
from tests.hf_checkpoints import randomize, rewrite_config, save

transformers = pytest.importorskip("transformers")

TOL = 1e-4
BASE = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            bos_token_id=1, eos_token_id=2)
CONFIGS = {
    "gqa": {},
    "mha_tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "mqa_theta": dict(num_key_value_heads=1, rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return compile_spec("specs/qwen2.yaml", tmp_path_factory.mktemp("art") / "qwen2").directory


def make(tmp_path, name, seed=0):
    config = transformers.Qwen2Config(**{**BASE, **CONFIGS[name]})
    config._attn_implementation = "sdpa"
    model = randomize(transformers.Qwen2ForCausalLM(config), seed)
    return model, save(model, tmp_path / name)


def ids(batch=2, length=11, seed=0):
    return random_ids(BASE["vocab_size"], batch, length, seed)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_greedy_tokens_match_transformers(tmp_path, artifact, name):
    ref, folder = make(tmp_path, name)
    ours = runtime.load(artifact, folder)
    assert max_logit_diff(ref, ours, ids()) <= TOL
    assert_greedy_tokens_match(ref, ours, ids(batch=1, length=6, seed=1))


def test_q_k_v_biases_are_loaded_and_o_proj_has_none(tmp_path):
    # the unfused compile keeps one module per projection, so each bias can be looked at by name
    unfused = compile_spec("specs/qwen2.yaml", tmp_path / "unfused", {"fuse": False}).directory
    ref, folder = make(tmp_path, "gqa")
    ours = runtime.load(unfused, folder)
    attn = ours.net.layers[0].attn
    for proj in ("q_proj", "k_proj", "v_proj"):
        want = getattr(ref.model.layers[0].self_attn, proj).bias
        assert torch.equal(getattr(attn, proj).bias, want) and want.abs().sum() > 0
    assert attn.o_proj.bias is None


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_transformers(tmp_path, artifact, side):
    ref, folder = make(tmp_path, "gqa")
    ours = runtime.load(artifact, folder)
    assert_padded_rows_match(ref, ours, ids(batch=2, length=9), pad=4, side=side)


def test_left_padded_batch_generates_like_transformers(tmp_path, artifact):
    ref, folder = make(tmp_path, "gqa")
    ours = runtime.load(artifact, folder)
    assert_left_padded_generation_matches(ref, ours, ids(batch=2, length=7, seed=3), pad=3)


def test_from_pretrained_picks_the_qwen2_spec(tmp_path):
    ref, folder = make(tmp_path, "gqa")
    ours = runtime.from_pretrained(folder)
    assert ours.spec.name == "qwen2"
    x = ids()
    with torch.no_grad():
        assert (ours(x).logits - ref(x).logits).abs().max().item() <= TOL


def test_sliding_window_checkpoints_are_refused_by_name(tmp_path, artifact):
    _, folder = make(tmp_path, "gqa")
    rewrite_config(folder, lambda c: c.update(use_sliding_window=True, sliding_window=4))
    with pytest.raises(ConfigError, match="use_sliding_window"):
        runtime.load(artifact, folder)
