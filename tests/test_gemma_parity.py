"""specs/gemma.yaml against transformers.GemmaForCausalLM on tiny random checkpoints."""
from __future__ import annotations

import pytest
import torch

import runtime

from tests.family_parity import (TOL, Family, assert_greedy_tokens_match, assert_left_padded_batch_matches,
                                 max_logit_diff)
from tests.hf_checkpoints import rewrite_config

transformers = pytest.importorskip("transformers")

GEMMA = Family("gemma", transformers.GemmaConfig, transformers.GemmaForCausalLM, dict(
    vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=4, head_dim=16, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
    pad_token_id=0))
CONFIGS = {
    "mha_head_dim_wider_than_hidden": {},
    "gqa_untied": dict(num_key_value_heads=2, tie_word_embeddings=False),
    "mqa_bias": dict(num_key_value_heads=1, attention_bias=True),
    "linear_rope": dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_greedy_tokens_match_transformers(tmp_path, name):
    ref, _, ours = GEMMA.make(tmp_path / name, CONFIGS[name])
    assert max_logit_diff(ref, ours, GEMMA.ids()) <= TOL
    assert_greedy_tokens_match(ref, ours, GEMMA.ids(batch=1, length=6, seed=1))


def test_legacy_gelu_name_means_the_tanh_approximation_as_in_transformers(tmp_path):
    ref, folder, _ = GEMMA.make(tmp_path / "legacy", {})
    rewrite_config(folder, lambda data: data.update(hidden_act="gelu"))
    ours = runtime.from_pretrained(folder)
    assert ours.config["hidden_act"] == "gelu"
    assert max_logit_diff(ref, ours, GEMMA.ids()) <= TOL


def test_left_padded_batch_matches_transformers(tmp_path):
    ref, _, ours = GEMMA.make(tmp_path / "gqa", dict(num_key_value_heads=2))
    assert_left_padded_batch_matches(ref, ours, GEMMA.ids(batch=2, length=7, seed=3))


def _first_layer_input(model, layers, x):
    seen = []
    handle = layers[0].register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]),
                                                 with_kwargs=True)
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def test_bfloat16_embedding_normalizer_is_rounded_like_transformers(tmp_path):
    # sqrt(48) = 6.928 is 6.9375 in bf16: multiplying by the exact value would round differently.
    ref, folder, _ = GEMMA.make(tmp_path / "h48", dict(hidden_size=48, head_dim=12))
    ours = runtime.from_pretrained(folder, dtype=torch.bfloat16)
    ref = ref.to(torch.bfloat16)
    x = GEMMA.ids()
    want = _first_layer_input(ref, ref.model.layers, x)
    have = _first_layer_input(ours, ours.net.layers, x)
    assert have.dtype == want.dtype == torch.bfloat16
    assert torch.equal(have, want)
