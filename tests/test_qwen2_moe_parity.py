"""specs/qwen2_moe.yaml (extends mixtral) against transformers.Qwen2MoeForCausalLM on tiny random
checkpoints: routed experts with and without renormalised top-k weights, the sigmoid-gated shared
expert, per-expert and stacked tensors, and only the experts the router picks run."""
from __future__ import annotations

from collections import Counter

import pytest

import runtime
from runtime.errors import ConfigError
from tests.family_parity import (TOL, Family, assert_greedy_tokens_match, assert_left_padded_batch_matches,
                                 assert_padded_rows_match, max_logit_diff)
from tests.hf_checkpoints import rewrite_config
from tests.moe_checkpoints import expert_rows, routed_rows, save_stacked

transformers = pytest.importorskip("transformers")

QWEN2_MOE = Family("qwen2_moe", transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM, dict(
    vocab_size=97, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
    shared_expert_intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    num_experts=4, num_experts_per_tok=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2))
CONFIGS = {
    "top2_of_4": {},
    "top3_of_6_renormalised": dict(num_experts=6, num_experts_per_tok=3, norm_topk_prob=True),
    "mha_tied_no_qkv_bias": dict(num_key_value_heads=4, tie_word_embeddings=True, qkv_bias=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_greedy_tokens_match_transformers(tmp_path, name):
    ref, _, ours = QWEN2_MOE.make(tmp_path / name, CONFIGS[name])
    assert max_logit_diff(ref, ours, QWEN2_MOE.ids()) <= TOL
    assert_greedy_tokens_match(ref, ours, QWEN2_MOE.ids(batch=1, length=6, seed=1))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_transformers(tmp_path, side):
    ref, _, ours = QWEN2_MOE.make(tmp_path / "pad", {})
    assert_padded_rows_match(ref, ours, QWEN2_MOE.ids(batch=2, length=9), pad=4, side=side)


def test_left_padded_batch_generates_like_transformers(tmp_path):
    ref, _, ours = QWEN2_MOE.make(tmp_path / "gen", {})
    assert_left_padded_batch_matches(ref, ours, QWEN2_MOE.ids(batch=2, length=7, seed=3))


def test_stacked_expert_tensors_load_like_per_expert_ones(tmp_path):
    ref, folder, per_expert = QWEN2_MOE.make(tmp_path / "per_expert", {})
    stacked = runtime.from_pretrained(save_stacked(ref, folder, tmp_path / "stacked", "mlp.experts.gate_up_proj"))
    x = QWEN2_MOE.ids()
    assert (stacked(x).logits - per_expert(x).logits).abs().max().item() == 0
    assert max_logit_diff(ref, stacked, x) <= TOL


def test_only_the_experts_the_router_picks_run(tmp_path):
    ref, _, ours = QWEN2_MOE.make(tmp_path / "count", dict(num_experts=8))
    x = QWEN2_MOE.ids(batch=1, length=2)
    want = routed_rows(ref, x, lambda layer: layer.mlp.gate)
    got = expert_rows(ours, x)
    for layer, rows in enumerate(want):
        assert got[layer] == Counter({e: 3 * n for e, n in rows.items()})
        assert len(rows) <= 4 < 8


@pytest.mark.parametrize("change, message", [
    (dict(decoder_sparse_step=2), "every layer must be sparse"),
    (dict(mlp_only_layers=[1]), "every layer must be sparse"),
    (dict(use_sliding_window=True), "use_sliding_window"),
])
def test_dense_layers_and_sliding_windows_are_refused_by_name(tmp_path, change, message):
    _, folder, _ = QWEN2_MOE.make(tmp_path / "ok", {})
    rewrite_config(folder, lambda data: data.update(change))
    with pytest.raises(ConfigError, match=message):
        runtime.from_pretrained(folder)
