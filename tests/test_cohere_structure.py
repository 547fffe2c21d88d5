"""Cohere (Command-R) written as a delta of Llama, against transformers.CohereForCausalLM: it needs
the structural features together, so it proves them on real numbers. A parallel residual (attention
and MLP both read one LayerNorm of the input), interleaved rotary pairs, per-head q/k LayerNorms with
[heads, head_dim] weights under `when: use_qk_norm`, and a logit scale."""
from __future__ import annotations

import pytest

import runtime
from compiler.errors import SpecError
from compiler.lower import lower
from compiler.pipeline import compile_spec
from compiler.spec import load_spec
from tests.family_parity import (TOL, Family, assert_greedy_tokens_match, assert_left_padded_batch_matches,
                                 max_logit_diff)
from tests.hf_checkpoints import randomize, save
from tests.llama_child import llama_child

transformers = pytest.importorskip("transformers")

COHERE = """spec: 1
name: cohere
extends: llama
matches: {model_type: [cohere], architectures: [CohereForCausalLM]}

config:
  rms_norm_eps: {remove: true}
  mlp_bias: {remove: true}
  layer_norm_eps: float = 1e-5
  use_qk_norm: bool = false
  logit_scale: float = 0.0625
  tie_word_embeddings: {default: true}

blocks:
  attention:
    params:
      q_norm: {norm: [num_heads, head_dim], when: use_qk_norm}
      k_norm: {norm: [num_kv_heads, head_dim], when: use_qk_norm}
    edits:
      - {update: q#3, set: {layout: interleaved}}
      - {update: k#3, set: {layout: interleaved}}
      - insert:
          - q: {op: layer_norm, x: q, w: q_norm, eps: layer_norm_eps, when: use_qk_norm}
          - k: {op: layer_norm, x: k, w: k_norm, eps: layer_norm_eps, when: use_qk_norm}
        before: q#3
  mlp:
    params: {gate_proj: {bias: false}, up_proj: {bias: false}, down_proj: {bias: false}}
  decoder_layer:
    params:
      mlp_norm: {remove: true}
    graph:
      - h: {op: layer_norm, x: x, w: attn_norm, eps: layer_norm_eps}
      - a: {op: call, block: attn, x: h, cos: cos, sin: sin}
      - m: {op: call, block: mlp, x: h}
      - x: {op: add, a: x, b: a}
      - x: {op: add, a: x, b: m}

model:
  edits:
    - {replace: x#3, with: {x: {op: layer_norm, x: x, w: norm, eps: layer_norm_eps}}}
    - {insert: {logits: {op: scale, x: logits, by: logit_scale}}, after: logits}

expect_fused: []

weights:
  - {remove: "model.layers.{i}.post_attention_layernorm.weight"}
"""

FAMILY = Family("cohere", transformers.CohereConfig, transformers.CohereForCausalLM, dict(
    vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohere")
    return compile_spec(llama_child(folder, "cohere", COHERE), folder / "art").directory


@pytest.mark.parametrize("overrides", [{}, dict(use_qk_norm=True), dict(use_qk_norm=True, tie_word_embeddings=False,
                                                                         logit_scale=0.5)])
def test_cohere_logits_and_greedy_tokens_match_transformers(tmp_path, artifact, overrides):
    ref = randomize(FAMILY.model_cls(FAMILY.config_cls(**{**FAMILY.base, **overrides})), 0)
    folder = save(ref, tmp_path / "ckpt")
    ours = runtime.load(artifact, folder)
    assert max_logit_diff(ref, ours, FAMILY.ids()) <= TOL
    assert_greedy_tokens_match(ref, ours, FAMILY.ids(batch=1, length=6, seed=1))
    if overrides:
        assert_left_padded_batch_matches(ref, ours, FAMILY.ids(batch=2, length=7, seed=3))


def test_per_head_norms_are_emitted_with_the_dims_they_scale(artifact):
    source = (artifact / "model.py").read_text()
    assert "self.q_norm = ops.Norm(cfg.num_heads, cfg.head_dim) if cfg.use_qk_norm else None" in source
    assert "ops.layer_norm(q, self.q_norm.weight, self.q_norm.bias, cfg.layer_norm_eps, dims=(-3, -1))" in source


def test_a_norm_weight_that_fits_no_dims_of_its_input_is_a_shape_error(tmp_path):
    llama_child(tmp_path, "cohere", COHERE.replace("[num_heads, head_dim]", "[num_kv_heads, head_dim]"))
    with pytest.raises(SpecError, match=r"the weight \[num_kv_heads, head_dim\] does not fit x "
                                        r"\[B, num_heads, S, head_dim\]: num_kv_heads must be a dim of 'x' left of head_dim"):
        lower(load_spec(tmp_path / "cohere.yaml"))
