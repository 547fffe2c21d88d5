"""specs/phi3.yaml against transformers.Phi3ForCausalLM on tiny random checkpoints."""
from __future__ import annotations

import pytest

import runtime
from tests.family_parity import (TOL, Family, assert_greedy_tokens_match, assert_left_padded_batch_matches,
                                 max_logit_diff)
from tests.hf_checkpoints import rewrite_config

transformers = pytest.importorskip("transformers")

PHI3 = Family("phi3", transformers.Phi3Config, transformers.Phi3ForCausalLM, dict(
    vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, original_max_position_embeddings=128,
    bos_token_id=1, eos_token_id=2, pad_token_id=0))
CONFIGS = {
    "gqa": {},
    "mha_tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "partial_rotary": dict(rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5)),
    "sliding_window": dict(sliding_window=4),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_greedy_tokens_match_transformers(tmp_path, name):
    ref, _, ours = PHI3.make(tmp_path / name, CONFIGS[name])
    assert max_logit_diff(ref, ours, PHI3.ids()) <= TOL
    assert_greedy_tokens_match(ref, ours, PHI3.ids(batch=1, length=6, seed=1))


def test_left_padded_batch_matches_transformers(tmp_path):
    ref, _, ours = PHI3.make(tmp_path / "gqa", {})
    assert_left_padded_batch_matches(ref, ours, PHI3.ids(batch=2, length=7, seed=3))


def test_transformers_4x_partial_rotary_key_gives_the_same_model(tmp_path):
    ref, folder, _ = PHI3.make(tmp_path / "partial", CONFIGS["partial_rotary"])

    def as_4x(data):
        params = data.pop("rope_parameters")
        data["rope_theta"] = params["rope_theta"]
        data["partial_rotary_factor"] = params["partial_rotary_factor"]
        data["rope_scaling"] = None
    rewrite_config(folder, as_4x)
    ours = runtime.from_pretrained(folder)
    assert ours.config["rotary_dim"] == 4
    assert max_logit_diff(ref, ours, PHI3.ids()) <= TOL


# An original context of 8 positions: an 11-token prompt uses the long factors; a 6-token prompt starts
# on the short ones and generation crosses over, keeping the keys it cached before.
LONGROPE = dict(max_position_embeddings=64, original_max_position_embeddings=8, rope_parameters=dict(
    rope_type="longrope", rope_theta=10000.0, short_factor=[1.0, 1.3, 1.7, 2.2], long_factor=[2.0, 3.5, 5.0, 9.0]))


def test_longrope_matches_transformers_on_both_sides_of_the_original_context(tmp_path):
    ref, _, ours = PHI3.make(tmp_path / "longrope", LONGROPE)
    assert max_logit_diff(ref, ours, PHI3.ids(length=11)) <= TOL
    assert max_logit_diff(ref, ours, PHI3.ids(length=5)) <= TOL
    assert_greedy_tokens_match(ref, ours, PHI3.ids(batch=1, length=6, seed=1))


def test_longrope_left_padded_batch_crosses_the_original_context_like_transformers(tmp_path):
    ref, _, ours = PHI3.make(tmp_path / "longrope_padded", LONGROPE)
    assert_left_padded_batch_matches(ref, ours, PHI3.ids(batch=2, length=7, seed=3))


def test_longrope_with_an_explicit_factor_and_partial_rotary(tmp_path):
    params = dict(LONGROPE["rope_parameters"], factor=3.0, partial_rotary_factor=0.5,
                  short_factor=[1.0, 1.5], long_factor=[3.0, 7.0])
    ref, _, ours = PHI3.make(tmp_path / "longrope_partial", dict(LONGROPE, rope_parameters=params))
    assert max_logit_diff(ref, ours, PHI3.ids(length=11)) <= TOL


def test_transformers_4x_longrope_config_gives_the_same_model(tmp_path):
    ref, folder, _ = PHI3.make(tmp_path / "longrope4x", LONGROPE)

    def as_4x(data):
        params = data.pop("rope_parameters")
        data["rope_theta"] = params["rope_theta"]
        data["rope_scaling"] = dict(type="su", short_factor=params["short_factor"], long_factor=params["long_factor"])
    rewrite_config(folder, as_4x)
    ours = runtime.from_pretrained(folder)
    assert ours.config["rope_type"] == "su" and ours.config["original_max_positions"] == 8
    assert max_logit_diff(ref, ours, PHI3.ids(length=11)) <= TOL
