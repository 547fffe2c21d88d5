"""specs/mistral.yaml (extends llama) against transformers.MistralForCausalLM on tiny random checkpoints.

The window (4) is shorter than every sequence, so the sliding-window mask is what is being tested:
prefill, padded batches and 20 greedy tokens generated far past the window through the KV cache.
"""
from __future__ import annotations

import pytest
import torch

import runtime
from compiler.pipeline import compile_spec
from tests.family_parity import assert_left_padded_generation_matches, assert_padded_rows_match, max_logit_diff, random_ids
from tests.hf_checkpoints import randomize, save

transformers = pytest.importorskip("transformers")

TOL = 1e-4
BASE = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            bos_token_id=1, eos_token_id=2, sliding_window=4)
CONFIGS = {
    "window4_gqa": {},
    "window1": dict(sliding_window=1),
    "no_window": dict(sliding_window=None, num_key_value_heads=4),
    "window3_tied_head_dim": dict(sliding_window=3, head_dim=16, tie_word_embeddings=True),
}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return compile_spec("specs/mistral.yaml", tmp_path_factory.mktemp("art") / "mistral").directory


def make(tmp_path, name, seed=0):
    config = transformers.MistralConfig(**{**BASE, **CONFIGS[name]})
    config._attn_implementation = "sdpa"
    model = randomize(transformers.MistralForCausalLM(config), seed)
    return model, save(model, tmp_path / name)


def ids(batch=2, length=11, seed=0):
    return random_ids(BASE["vocab_size"], batch, length, seed)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_greedy_tokens_match_transformers(tmp_path, artifact, name):
    ref, folder = make(tmp_path, name)
    ours = runtime.load(artifact, folder)
    assert ours.config["sliding_window"] == CONFIGS[name].get("sliding_window", BASE["sliding_window"])
    assert max_logit_diff(ref, ours, ids()) <= TOL

    prompt = ids(batch=1, length=6, seed=1)
    # Transformers' sliding-window cache keeps keys[-window + 1:], which for a window of 1 is
    # keys[0:] (all of them) while its mask assumes one: its cached decoding is off there, so the
    # reference is its full recomputation, which applies the window exactly.
    use_cache = ours.config["sliding_window"] != 1
    want = ref.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0,
                        use_cache=use_cache)
    have = ours.generate(prompt, max_new_tokens=20, eos_token_id=None)
    assert have.tolist() == want.tolist()


def test_the_window_changes_the_logits(tmp_path, artifact):
    """Guards the test above: with the window ignored, the logits would differ beyond the tolerance."""
    ref, folder = make(tmp_path, "window4_gqa")
    windowed = runtime.load(artifact, folder)
    unwindowed = runtime.load(artifact, folder, config_overrides={"sliding_window": None})
    x = ids()
    assert (windowed(x).logits - unwindowed(x).logits)[:, 4:].abs().max().item() > 100 * TOL
    assert (windowed(x).logits - unwindowed(x).logits)[:, :4].abs().max().item() <= TOL


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_transformers(tmp_path, artifact, side):
    ref, folder = make(tmp_path, "window4_gqa")
    ours = runtime.load(artifact, folder)
    assert_padded_rows_match(ref, ours, ids(batch=2, length=10), pad=3, side=side)


def test_left_padded_batch_generates_past_the_window_like_transformers(tmp_path, artifact):
    ref, folder = make(tmp_path, "window4_gqa")
    ours = runtime.load(artifact, folder)
    assert_left_padded_generation_matches(ref, ours, ids(batch=2, length=7, seed=3), pad=3)


def test_from_pretrained_picks_the_mistral_spec(tmp_path):
    ref, folder = make(tmp_path, "window4_gqa")
    ours = runtime.from_pretrained(folder)
    assert ours.spec.name == "mistral"
    x = ids()
    with torch.no_grad():
        assert (ours(x).logits - ref(x).logits).abs().max().item() <= TOL
