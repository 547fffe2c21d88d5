"""specs/qwen3.yaml against transformers.Qwen3ForCausalLM on tiny random checkpoints."""
from __future__ import annotations

import pytest

import runtime
from tests.family_parity import (TOL, Family, assert_greedy_tokens_match, assert_left_padded_batch_matches,
                                 max_logit_diff)
from tests.hf_checkpoints import rewrite_config

transformers = pytest.importorskip("transformers")

QWEN3 = Family("qwen3", transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(
    vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=128, bos_token_id=1, eos_token_id=2))
CONFIGS = {
    "gqa_head_dim_wider_than_hidden": {},
    "mqa_tied_bias": dict(num_key_value_heads=1, tie_word_embeddings=True, attention_bias=True),
    # Layer 1 attends to the last 4 positions only; prompt and generation both run past the window.
    "sliding_window_from_layer_1": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_greedy_tokens_match_transformers(tmp_path, name):
    ref, _, ours = QWEN3.make(tmp_path / name, CONFIGS[name])
    assert max_logit_diff(ref, ours, QWEN3.ids()) <= TOL
    assert_greedy_tokens_match(ref, ours, QWEN3.ids(batch=1, length=6, seed=1))


def test_left_padded_batch_matches_transformers(tmp_path):
    ref, _, ours = QWEN3.make(tmp_path / "gqa", {})
    assert_left_padded_batch_matches(ref, ours, QWEN3.ids(batch=2, length=7, seed=3))


def test_sliding_layers_come_from_max_window_layers_when_layer_types_is_absent(tmp_path):
    ref, folder, _ = QWEN3.make(tmp_path / "sw", CONFIGS["sliding_window_from_layer_1"])
    rewrite_config(folder, lambda data: data.pop("layer_types"))
    ours = runtime.from_pretrained(folder)
    assert ours.config["layer_types"] is None
    assert max_logit_diff(ref, ours, QWEN3.ids()) <= TOL
