"""specs/mixtral.yaml (extends mistral) against transformers.MixtralForCausalLM on tiny random
checkpoints: per-expert (save_pretrained) and stacked (5.x in-memory) tensors, and only the experts
the router picks run."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

import runtime
from tests.family_parity import (TOL, Family, assert_greedy_tokens_match, assert_left_padded_batch_matches,
                                 assert_padded_rows_match, max_logit_diff)
from tests.moe_checkpoints import expert_rows, routed_rows, save_stacked

transformers = pytest.importorskip("transformers")

MIXTRAL = Family("mixtral", transformers.MixtralConfig, transformers.MixtralForCausalLM, dict(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
    bos_token_id=1, eos_token_id=2))
CONFIGS = {
    "four_experts_top2": {},
    "eight_experts_top3_window": dict(num_local_experts=8, num_experts_per_tok=3, sliding_window=4),
    "one_expert_per_token_tied": dict(num_experts_per_tok=1, tie_word_embeddings=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_greedy_tokens_match_transformers(tmp_path, name):
    ref, _, ours = MIXTRAL.make(tmp_path / name, CONFIGS[name])
    assert max_logit_diff(ref, ours, MIXTRAL.ids()) <= TOL
    assert_greedy_tokens_match(ref, ours, MIXTRAL.ids(batch=1, length=6, seed=1))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_transformers(tmp_path, side):
    ref, _, ours = MIXTRAL.make(tmp_path / "pad", {})
    assert_padded_rows_match(ref, ours, MIXTRAL.ids(batch=2, length=9), pad=4, side=side)


def test_left_padded_batch_generates_like_transformers(tmp_path):
    ref, _, ours = MIXTRAL.make(tmp_path / "gen", {})
    assert_left_padded_batch_matches(ref, ours, MIXTRAL.ids(batch=2, length=7, seed=3))


def test_stacked_expert_tensors_load_like_per_expert_ones(tmp_path):
    ref, folder, per_expert = MIXTRAL.make(tmp_path / "per_expert", {})
    stacked = runtime.from_pretrained(save_stacked(ref, folder, tmp_path / "stacked", "mlp.experts.gate_up_proj"))
    x = MIXTRAL.ids()
    assert (stacked(x).logits - per_expert(x).logits).abs().max().item() == 0
    assert max_logit_diff(ref, stacked, x) <= TOL


def test_only_the_experts_the_router_picks_run(tmp_path):
    ref, _, ours = MIXTRAL.make(tmp_path / "count", dict(num_local_experts=8))
    x = MIXTRAL.ids(batch=1, length=2)
    want = routed_rows(ref, x, lambda layer: layer.mlp.gate)
    got = expert_rows(ours, x)
    for layer, rows in enumerate(want):
        # each of the 3 projections ran each picked expert on exactly its routed rows, no other expert
        assert got[layer] == Counter({e: 3 * n for e, n in rows.items()})
        assert len(rows) <= 4 < 8


def test_saving_writes_save_pretrained_per_expert_layout_whichever_layout_was_loaded(tmp_path):
    ref, folder, per_expert = MIXTRAL.make(tmp_path / "per_expert", {})
    stacked = runtime.from_pretrained(save_stacked(ref, folder, tmp_path / "stacked", "mlp.experts.gate_up_proj"))
    want = load_file(str(folder / "model.safetensors"))
    x = MIXTRAL.ids()
    for name, model in (("from_per_expert", per_expert), ("from_stacked", stacked)):
        out = runtime.save_pretrained(model, tmp_path / name)
        saved = load_file(str(out / "model.safetensors"))
        assert sorted(saved) == sorted(want) and all(torch.equal(saved[k], want[k]) for k in want)
        back = transformers.MixtralForCausalLM.from_pretrained(out).eval()
        assert max_logit_diff(back, per_expert, x) <= TOL
