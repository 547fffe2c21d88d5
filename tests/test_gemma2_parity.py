"""specs/gemma2.yaml against transformers.Gemma2ForCausalLM on tiny random checkpoints."""
from __future__ import annotations

import pytest

import runtime
from tests.family_parity import (TOL, Family, assert_greedy_tokens_match, assert_left_padded_batch_matches,
                                 max_logit_diff)
from tests.hf_checkpoints import rewrite_config

transformers = pytest.importorskip("transformers")

# Caps near the size of the random scores and logits, so tanh really bends them; a window of 4 that
# prompts and generation run past; query_pre_attn_scalar unlike head_dim so a head_dim scale is caught.
GEMMA2 = Family("gemma2", transformers.Gemma2Config, transformers.Gemma2ForCausalLM, dict(
    vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, max_position_embeddings=128,
    sliding_window=4, attn_logit_softcapping=1.0, final_logit_softcapping=1.5,
    bos_token_id=1, eos_token_id=2, pad_token_id=0))
CONFIGS = {
    "alternating_sliding_softcapped": {},
    "no_softcaps_untied_mqa": dict(attn_logit_softcapping=None, final_logit_softcapping=None,
                                   tie_word_embeddings=False, num_key_value_heads=1),
    "explicit_layer_types": dict(layer_types=["full_attention", "sliding_attention", "sliding_attention"]),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_greedy_tokens_match_transformers(tmp_path, name):
    ref, _, ours = GEMMA2.make(tmp_path / name, CONFIGS[name])
    assert max_logit_diff(ref, ours, GEMMA2.ids()) <= TOL
    assert_greedy_tokens_match(ref, ours, GEMMA2.ids(batch=1, length=6, seed=1))


def test_left_padded_batch_matches_transformers(tmp_path):
    ref, _, ours = GEMMA2.make(tmp_path / "base", {})
    assert_left_padded_batch_matches(ref, ours, GEMMA2.ids(batch=2, length=7, seed=3))


def test_configs_without_layer_types_slide_in_even_layers(tmp_path):
    ref, folder, _ = GEMMA2.make(tmp_path / "old", {})
    rewrite_config(folder, lambda data: data.pop("layer_types"))
    ours = runtime.from_pretrained(folder)
    assert ours.config["layer_types"] is None
    assert max_logit_diff(ref, ours, GEMMA2.ids()) <= TOL
