"""specs/gpt2.yaml against transformers.GPT2LMHeadModel on tiny random checkpoints."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import runtime
from tests.family_parity import (TOL, Family, assert_greedy_tokens_match, assert_left_padded_batch_matches,
                                 max_logit_diff)

transformers = pytest.importorskip("transformers")

GPT2 = Family("gpt2", transformers.GPT2Config, transformers.GPT2LMHeadModel, dict(
    vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2))
CONFIGS = {
    "tied": {},
    "untied_inner_size_pytorch_tanh": dict(tie_word_embeddings=False, n_inner=48,
                                          activation_function="gelu_pytorch_tanh"),
    "scaled_by_inverse_layer_index": dict(n_layer=3, scale_attn_by_inverse_layer_idx=True),
    "unscaled_attention": dict(scale_attn_weights=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_greedy_tokens_match_transformers(tmp_path, name):
    ref, _, ours = GPT2.make(tmp_path / name, CONFIGS[name])
    assert max_logit_diff(ref, ours, GPT2.ids()) <= TOL
    assert_greedy_tokens_match(ref, ours, GPT2.ids(batch=1, length=6, seed=1))


def test_left_padded_batch_matches_transformers(tmp_path):
    ref, _, ours = GPT2.make(tmp_path / "tied", {})
    assert_left_padded_batch_matches(ref, ours, GPT2.ids(batch=2, length=7, seed=3))


def test_openai_layout_without_prefix_and_with_mask_buffers_loads(tmp_path):
    """The hub's converted GPT-2 checkpoints: no `transformer.` prefix, causal-mask buffers per layer."""
    ref, folder, _ = GPT2.make(tmp_path / "openai", {})
    path = folder / "model.safetensors"
    tensors = {name.removeprefix("transformer."): t for name, t in load_file(path).items()}
    for i in range(GPT2.base["n_layer"]):
        tensors[f"h.{i}.attn.bias"] = torch.ones(1, 1, 64, 64, dtype=torch.bool).tril()
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(tensors, path, metadata={"format": "pt"})
    ours = runtime.from_pretrained(folder)
    assert sorted(ours.load_report["ignored"]) == sorted(
        f"h.{i}.attn.{b}" for i in range(GPT2.base["n_layer"]) for b in ("bias", "masked_bias"))
    assert max_logit_diff(ref, ours, GPT2.ids()) <= TOL
