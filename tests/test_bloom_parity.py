"""specs/bloom.yaml against transformers.BloomForCausalLM on tiny random checkpoints: ALiBi with
Transformers' slopes for power-of-two and other head counts, its bias from key positions during
cached decoding, the embedding LayerNorm, the per-head fused query_key_value, both residual sources."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import runtime
from tests.family_parity import (TOL, Family, assert_cached_generation_matches_uncached, assert_greedy_tokens_match,
                                 assert_left_padded_batch_matches, max_logit_diff)
from tests.hf_checkpoints import rewrite_config

transformers = pytest.importorskip("transformers")

BLOOM = Family("bloom", transformers.BloomConfig, transformers.BloomForCausalLM, dict(
    vocab_size=97, hidden_size=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2, pad_token_id=0))
CONFIGS = {
    "heads_4_tied": {},
    # 6 heads: 4 slopes from 2 ** -2 and 2 interleaved ones from 2 ** -1 (not a power of two)
    "heads_6_untied": dict(hidden_size=48, n_head=6, tie_word_embeddings=False),
    "heads_3_residual_after_norm": dict(hidden_size=24, n_head=3, apply_residual_connection_post_layernorm=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_greedy_tokens_match_transformers(tmp_path, name):
    ref, _, ours = BLOOM.make(tmp_path / name, CONFIGS[name])
    assert max_logit_diff(ref, ours, BLOOM.ids()) <= TOL
    assert_greedy_tokens_match(ref, ours, BLOOM.ids(batch=1, length=6, seed=1))


@pytest.mark.parametrize("name", ["heads_4_tied", "heads_6_untied"])
def test_left_padded_batch_matches_transformers(tmp_path, name):
    ref, _, ours = BLOOM.make(tmp_path / name, CONFIGS[name])
    assert_left_padded_batch_matches(ref, ours, BLOOM.ids(batch=2, length=7, seed=3))


def test_cached_decoding_equals_decoding_without_cache_on_a_left_padded_batch(tmp_path):
    # the bias of each cached key is its own position, not the newest token's: a bias from the step's
    # positions only would differ from the full recomputation at every step after the prompt
    ref, _, ours = BLOOM.make(tmp_path / "cache", CONFIGS["heads_6_untied"])
    x = BLOOM.ids(batch=2, length=7, seed=4)
    x[0, :3] = 0
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    out = assert_cached_generation_matches_uncached(ours, x, mask, new_tokens=12)
    for use_cache in (True, False):
        want = ref.generate(x, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None,
                            pad_token_id=0, use_cache=use_cache)
        assert out.tolist() == want.tolist()


def test_alibi_changes_the_numbers(tmp_path):
    # with the slopes at zero the model would still run; the bias must reach the scores
    _, _, ours = BLOOM.make(tmp_path / "alibi", {})
    x = BLOOM.ids()
    with_bias = ours(x).logits
    keys = torch.zeros_like(x)
    assert (ours(x, key_positions=keys).logits - with_bias).abs().max().item() > 1e-3


def test_first_bloom_config_keys_and_files_without_prefix_give_the_same_model(tmp_path):
    """The hub's bigscience configs say n_embed and num_attention_heads; their tensors have no
    `transformer.` prefix."""
    ref, folder, _ = BLOOM.make(tmp_path / "hub", CONFIGS["heads_6_untied"])

    def as_hub(data):
        data["n_embed"] = data.pop("hidden_size")
        data["num_attention_heads"] = data.pop("n_head")
        data["torch_dtype"] = data.pop("dtype")
    rewrite_config(folder, as_hub)
    path = folder / "model.safetensors"
    save_file({name.removeprefix("transformer."): t for name, t in load_file(path).items()}, path,
              metadata={"format": "pt"})
    ours = runtime.from_pretrained(folder)
    assert (ours.config["hidden_size"], ours.config["num_heads"]) == (48, 6)
    assert max_logit_diff(ref, ours, BLOOM.ids()) <= TOL


def test_a_saved_model_loads_in_transformers_with_the_same_weights(tmp_path):
    ref, _, ours = BLOOM.make(tmp_path / "ckpt", CONFIGS["heads_6_untied"])
    folder = runtime.save_pretrained(ours, tmp_path / "saved")
    again = transformers.BloomForCausalLM.from_pretrained(folder).eval()
    for name, tensor in ref.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
