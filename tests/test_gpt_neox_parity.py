"""specs/gpt_neox.yaml against transformers.GPTNeoXForCausalLM (Pythia) on tiny random checkpoints:
both residual layouts, partial rotary, the per-head fused query_key_value, 4.x and 5.x config keys."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import runtime
from tests.family_parity import (TOL, Family, assert_greedy_tokens_match, assert_left_padded_batch_matches,
                                 max_logit_diff)
from tests.hf_checkpoints import rewrite_config

transformers = pytest.importorskip("transformers")

NEOX = Family("gpt_neox", transformers.GPTNeoXConfig, transformers.GPTNeoXForCausalLM, dict(
    vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0))


def rope(partial: float, **extra) -> dict:
    return dict(rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=partial, **extra))


CONFIGS = {
    # Pythia: parallel residual, a quarter of each head's dims rotated
    "pythia": {},
    "sequential_half_rotary_tied": dict(use_parallel_residual=False, tie_word_embeddings=True, **rope(0.5)),
    "no_bias_full_rotary_theta": dict(attention_bias=False, rope_parameters=dict(
        rope_type="default", rope_theta=500.0, partial_rotary_factor=1.0)),
    "linear_scaling": dict(rope_parameters=dict(rope_type="linear", factor=2.0, rope_theta=10000.0,
                                                partial_rotary_factor=0.5)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_greedy_tokens_match_transformers(tmp_path, name):
    ref, _, ours = NEOX.make(tmp_path / name, CONFIGS[name])
    assert max_logit_diff(ref, ours, NEOX.ids()) <= TOL
    assert_greedy_tokens_match(ref, ours, NEOX.ids(batch=1, length=6, seed=1))


@pytest.mark.parametrize("parallel", [True, False])
def test_left_padded_batch_matches_transformers_in_both_residual_layouts(tmp_path, parallel):
    ref, _, ours = NEOX.make(tmp_path / "padded", dict(use_parallel_residual=parallel, **rope(0.5)))
    assert_left_padded_batch_matches(ref, ours, NEOX.ids(batch=2, length=7, seed=3))


def test_the_residual_switch_changes_the_numbers(tmp_path):
    # the same weights read in the other layout: both layouts matching Transformers proves the switch
    # only if they compute different numbers
    ref, folder, ours = NEOX.make(tmp_path / "switch", {})
    rewrite_config(folder, lambda c: c.update(use_parallel_residual=False))
    other = runtime.from_pretrained(folder)
    x = NEOX.ids()
    assert (ours(x).logits - other(x).logits).abs().max().item() > 1e-2


def test_transformers_4x_config_keys_give_the_same_model(tmp_path):
    ref, folder, _ = NEOX.make(tmp_path / "4x", rope(0.5))

    def as_4x(data):
        params = data.pop("rope_parameters")
        data["rotary_emb_base"] = params["rope_theta"]
        data["rotary_pct"] = params["partial_rotary_factor"]
        data["rope_scaling"] = None
        data["torch_dtype"] = data.pop("dtype")
    rewrite_config(folder, as_4x)
    ours = runtime.from_pretrained(folder)
    assert ours.config["rotary_dim"] == 4
    assert max_logit_diff(ref, ours, NEOX.ids()) <= TOL


def test_pythia_layout_with_lm_head_named_embed_out_and_old_buffers_loads(tmp_path):
    """Checkpoints written before Transformers 4.31 (the hub's Pythia files) also carry each layer's
    causal-mask buffers and rotary frequencies; they are dropped and reported."""
    ref, folder, _ = NEOX.make(tmp_path / "old", {})
    path = folder / "model.safetensors"
    tensors = load_file(path)
    assert "embed_out.weight" in tensors
    for i in range(NEOX.base["num_hidden_layers"]):
        tensors[f"gpt_neox.layers.{i}.attention.bias"] = torch.ones(1, 1, 128, 128, dtype=torch.bool).tril()
        tensors[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
        tensors[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.ones(1)
    save_file(tensors, path, metadata={"format": "pt"})
    ours = runtime.from_pretrained(folder)
    assert len(ours.load_report["ignored"]) == 3 * NEOX.base["num_hidden_layers"]
    assert max_logit_diff(ref, ours, NEOX.ids()) <= TOL


def test_a_saved_model_loads_in_transformers_with_the_same_weights(tmp_path):
    ref, _, ours = NEOX.make(tmp_path / "ckpt", {})
    folder = runtime.save_pretrained(ours, tmp_path / "saved")
    again = transformers.GPTNeoXForCausalLM.from_pretrained(folder).eval()
    for name, tensor in ref.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
