"""specs/t5.yaml (v1.0, ReLU) and specs/t5_v1_1.yaml (v1.1 / Flan, gated-GELU, untied head) against
transformers.T5ForConditionalGeneration: logits on a padded source, greedy tokens of generate (the
encoder and cross-attention keys run once, the decoder's self-attention goes through the KV cache)."""
from __future__ import annotations

import pytest
import torch

import runtime
from tests.encoder_cases import TOL
from tests.hf_checkpoints import randomize, save

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0,
            pad_token_id=0, eos_token_id=1)
VARIANTS = {
    "v1_0": ("t5", dict(feed_forward_proj="relu")),
    "v1_1": ("t5_v1_1", dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
}


def make(tmp_path, variant, seed=0, scale=1.0, **extra):
    config = transformers.T5Config(**{**BASE, **VARIANTS[variant][1], **extra})
    model = randomize(transformers.T5ForConditionalGeneration(config), seed)
    with torch.no_grad():
        # larger weights than randomize's, so that greedy decoding does not settle on one token
        for name, p in model.named_parameters():
            if "layer_norm" not in name:
                p.mul_(scale)
    return model, save(model, tmp_path / variant)


def source(batch=2, length=12, seed=0):
    ids = torch.randint(2, BASE["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, -5:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_transformers_with_a_padded_source(tmp_path, variant):
    ref, folder = make(tmp_path, variant)
    ours = runtime.from_pretrained(folder)
    assert ours.spec.name == VARIANTS[variant][0]   # chosen by feed_forward_proj among the t5 specs
    ids, mask = source()
    dec = torch.randint(2, BASE["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    got = ours(ids, attention_mask=mask, decoder_input_ids=dec).logits
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= TOL


# Transformers 5.24 sizes its generation cache by num_layers, so its generate fails when the decoder
# has more layers than the encoder: generation is compared with equal stacks.
SAME_DEPTH = dict(num_decoder_layers=BASE["num_layers"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_generation_matches_transformers(tmp_path, variant):
    ref, folder = make(tmp_path, variant, seed=3, scale=6.0, **SAME_DEPTH)
    ours = runtime.from_pretrained(folder)
    ids, mask = source()
    want = ref.generate(ids, attention_mask=mask, max_new_tokens=15, do_sample=False, eos_token_id=None)
    computed = {"encoder": 0, "cross_kv": 0}
    ours.net.encoder.layers[0].register_forward_hook(lambda *_: computed.__setitem__("encoder", computed["encoder"] + 1))
    # the projection inside the static block (fused k/v: `kv`; unfused: `k`), not the block, whose
    # hooks fire on every (cached) call
    cross = ours.net.dec_layers[1].cross_kv
    (cross.kv if hasattr(cross, "kv") else cross.k).register_forward_hook(
        lambda *_: computed.__setitem__("cross_kv", computed["cross_kv"] + 1))
    have = ours.generate(ids, attention_mask=mask, max_new_tokens=15, eos_token_id=None)
    assert have.tolist() == want.tolist()
    assert len(set(have[0].tolist())) >= 4, "degenerate output would not exercise the cache"
    assert computed == {"encoder": 1, "cross_kv": 1}   # run once for 15 decoding steps


def test_generation_stops_at_the_end_token_and_static_blocks_are_restored(tmp_path):
    ref, folder = make(tmp_path, "v1_0", seed=3, scale=6.0, **SAME_DEPTH)
    ours = runtime.from_pretrained(folder)
    ids, mask = source()
    free = ours.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=None)
    eos = int(free[0, 4])
    want = ref.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=0)
    have = ours.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    assert have.tolist() == want.tolist()
    # after generate the encoder runs again for a new source (its one-shot memo is gone)
    other, other_mask = source(seed=5)
    dec = torch.zeros(2, 1, dtype=torch.long)
    with torch.no_grad():
        expected = ref(input_ids=other, attention_mask=other_mask, decoder_input_ids=dec).logits
    assert (ours(other, attention_mask=other_mask, decoder_input_ids=dec).logits - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("config_says_tied", [True, False])
def test_a_checkpoint_with_its_own_lm_head_is_loaded_untied_like_transformers(tmp_path, config_says_tied):
    """Flan-T5 checkpoints carry lm_head.weight apart from shared.weight; Transformers 5 configs say
    tie_word_embeddings: true for every T5, 4.x configs of v1.1 say false. Both load untied."""
    import json

    from safetensors.torch import load_file, save_file
    _, folder = make(tmp_path, "v1_1")
    tensors = load_file(folder / "model.safetensors")
    tensors["lm_head.weight"] = 0.08 * torch.randn(BASE["vocab_size"], BASE["d_model"], generator=torch.Generator().manual_seed(7))
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    if not config_says_tied:
        data = json.loads((folder / "config.json").read_text())
        data["tie_word_embeddings"] = False
        data.pop("scale_decoder_outputs")
        (folder / "config.json").write_text(json.dumps(data))
    ref = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    ours = runtime.from_pretrained(folder)
    assert ours.load_report["untied"] == (["lm_head.weight"] if config_says_tied else [])
    assert ours.net.lm_head.weight.data_ptr() != ours.net.shared.weight.data_ptr()
    ids, mask = source()
    dec = torch.randint(2, BASE["vocab_size"], (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert (ours(ids, attention_mask=mask, decoder_input_ids=dec).logits - want).abs().max().item() <= TOL
