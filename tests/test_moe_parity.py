"""specs/mixtral.yaml (extends mistral) and specs/qwen2_moe.yaml (extends mixtral) against
transformers.MixtralForCausalLM and Qwen2MoeForCausalLM on tiny random checkpoints: logits, padded
batches and greedy generation; per-expert (save_pretrained) and stacked (5.x in-memory) expert
tensors, saved back in save_pretrained's layout; and only the experts the router picks run."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

import runtime
from runtime.errors import ConfigError
from tests.family_parity import (TOL, Family, assert_greedy_tokens_match, assert_left_padded_batch_matches,
                                 assert_padded_rows_match, max_logit_diff)
from tests.hf_checkpoints import rewrite_config
from tests.moe_checkpoints import expert_rows, routed_rows, save_stacked

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            num_experts_per_tok=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
MIXTRAL = Family("mixtral", transformers.MixtralConfig, transformers.MixtralForCausalLM,
                 dict(TINY, intermediate_size=48, num_local_experts=4))
QWEN2_MOE = Family("qwen2_moe", transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM,
                   dict(TINY, intermediate_size=48, moe_intermediate_size=16, shared_expert_intermediate_size=40,
                        num_experts=4))
FAMILIES = {"mixtral": (MIXTRAL, "num_local_experts"), "qwen2_moe": (QWEN2_MOE, "num_experts")}
CONFIGS = [
    ("mixtral", "four_experts_top2", {}),
    ("mixtral", "eight_experts_top3_window", dict(num_local_experts=8, num_experts_per_tok=3, sliding_window=4)),
    ("mixtral", "one_expert_per_token_tied", dict(num_experts_per_tok=1, tie_word_embeddings=True)),
    ("qwen2_moe", "top2_of_4", {}),
    ("qwen2_moe", "top3_of_6_renormalised", dict(num_experts=6, num_experts_per_tok=3, norm_topk_prob=True)),
    ("qwen2_moe", "mha_tied_no_qkv_bias", dict(num_key_value_heads=4, tie_word_embeddings=True, qkv_bias=False)),
    # dense SwiGLU layers between the sparse ones: off the decoder_sparse_step grid, or listed
    ("qwen2_moe", "every_second_layer_sparse", dict(decoder_sparse_step=2, num_hidden_layers=4)),
    ("qwen2_moe", "mlp_only_layers", dict(mlp_only_layers=[0, 2], num_hidden_layers=3)),
]


@pytest.mark.parametrize("family, name, overrides", CONFIGS, ids=[f"{f}-{n}" for f, n, _ in CONFIGS])
def test_logits_and_greedy_tokens_match_transformers(tmp_path, family, name, overrides):
    fam = FAMILIES[family][0]
    ref, _, ours = fam.make(tmp_path / name, overrides)
    assert max_logit_diff(ref, ours, fam.ids()) <= TOL
    assert_greedy_tokens_match(ref, ours, fam.ids(batch=1, length=6, seed=1))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_padded_batch_matches_transformers(tmp_path, family, side):
    fam = FAMILIES[family][0]
    ref, _, ours = fam.make(tmp_path / "pad", {})
    assert_padded_rows_match(ref, ours, fam.ids(batch=2, length=9), pad=4, side=side)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_left_padded_batch_generates_like_transformers(tmp_path, family):
    fam = FAMILIES[family][0]
    ref, _, ours = fam.make(tmp_path / "gen", {})
    assert_left_padded_batch_matches(ref, ours, fam.ids(batch=2, length=7, seed=3))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_stacked_expert_tensors_load_like_per_expert_ones_and_save_as_save_pretrained_does(tmp_path, family):
    fam = FAMILIES[family][0]
    ref, folder, per_expert = fam.make(tmp_path / "per_expert", {})
    stacked = runtime.from_pretrained(save_stacked(ref, folder, tmp_path / "stacked", "mlp.experts.gate_up_proj"))
    x = fam.ids()
    assert (stacked(x).logits - per_expert(x).logits).abs().max().item() == 0
    assert max_logit_diff(ref, stacked, x) <= TOL
    want = load_file(str(folder / "model.safetensors"))
    for name, model in (("from_per_expert", per_expert), ("from_stacked", stacked)):
        out = runtime.save_pretrained(model, tmp_path / name)
        saved = load_file(str(out / "model.safetensors"))
        assert sorted(saved) == sorted(want) and all(torch.equal(saved[k], want[k]) for k in want)
        back = fam.model_cls.from_pretrained(out).eval()
        assert max_logit_diff(back, per_expert, x) <= TOL


@pytest.mark.parametrize("family", list(FAMILIES))
def test_only_the_experts_the_router_picks_run(tmp_path, family):
    fam, experts = FAMILIES[family]
    ref, _, ours = fam.make(tmp_path / "count", {experts: 8})
    x = fam.ids(batch=1, length=2)
    want = routed_rows(ref, x, lambda layer: layer.mlp.gate)
    got = expert_rows(ours, x)
    for layer, rows in enumerate(want):
        # each of the 3 projections ran each picked expert on exactly its routed rows, no other expert
        assert got[layer] == Counter({e: 3 * n for e, n in rows.items()})
        assert len(rows) <= 4 < 8


@pytest.mark.parametrize("change, message", [
    (dict(use_sliding_window=True), "use_sliding_window"),
    (dict(decoder_sparse_step=0), "decoder_sparse_step must be positive"),
])
def test_qwen2_moe_sliding_windows_and_a_zero_sparse_step_are_refused_by_name(tmp_path, change, message):
    _, folder, _ = QWEN2_MOE.make(tmp_path / "ok", {})
    rewrite_config(folder, lambda data: data.update(change))
    with pytest.raises(ConfigError, match=message):
        runtime.from_pretrained(folder)
