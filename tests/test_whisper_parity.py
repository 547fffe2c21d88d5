"""specs/whisper.yaml against transformers.WhisperForConditionalGeneration on tiny random checkpoints:
logits for padded decoder batches (the log-mel features a float input), and greedy generation from
the decoder start token with the encoder and the cross-attention keys run once."""
from __future__ import annotations

import sys

import pytest
import torch

import runtime
from compiler.pipeline import compile_spec
from tests.family_parity import TOL, Family
from tests.tiny_configs import WHISPER as BASE

transformers = pytest.importorskip("transformers")

WHISPER = Family("whisper", transformers.WhisperConfig, transformers.WhisperForConditionalGeneration, BASE)


def features(batch=2, seed=0):
    """Log-mel frames: 2 * max_source_positions of them, the length Whisper's encoder requires."""
    return torch.randn(batch, BASE["num_mel_bins"], 2 * BASE["max_source_positions"],
                       generator=torch.Generator().manual_seed(seed))


def scaled(factor):
    """Larger weights than randomize's, so that greedy decoding does not settle on one token."""
    def adjust(model):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" not in name:
                    p.mul_(factor)
    return adjust


@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_match_transformers_for_a_padded_decoder_batch(tmp_path, side):
    ref, _, ours = WHISPER.make(tmp_path / side, {})
    dec = WHISPER.ids(batch=2, length=7, seed=1)
    mask = torch.ones_like(dec)
    if side == "right":
        mask[1, -3:] = 0
    else:
        mask[1, :3] = 0
    dec[mask == 0] = 0
    # Transformers' plain forward numbers decoder positions 0.. whatever the padding (its generate
    # counts real tokens, as the spec's supplied positions do): it is given those positions
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    feats = features()
    with torch.no_grad():
        want = ref(input_features=feats, decoder_input_ids=dec, decoder_attention_mask=mask,
                   decoder_position_ids=positions).logits
    got = ours(feats, decoder_input_ids=dec, decoder_attention_mask=mask).logits
    assert got.shape == want.shape
    real = mask.bool()
    assert (got[real] - want[real]).abs().max().item() <= TOL
    alone = ours(feats[1:], decoder_input_ids=dec[1:, real[1]]).logits
    assert (got[1, real[1]] - alone[0]).abs().max().item() <= TOL


# begin_suppress_tokens as WhisperConfig writes them by default (ids past this vocabulary: inert), and
# a set inside it, which changes the first token
@pytest.mark.parametrize("extra", [{}, dict(begin_suppress_tokens=[8, 49], eos_token_id=87)],
                         ids=["default_config", "suppressed_first_tokens_and_an_end_token"])
def test_greedy_generation_matches_transformers(tmp_path, extra):
    ref, _, ours = WHISPER.make(tmp_path / "m", extra, seed=3, adjust=scaled(4.0))
    feats = features()
    # GenerationMixin.generate: the encoder-decoder loop itself, from decoder_start_token_id, with the
    # processors of the model's generation config
    want = transformers.GenerationMixin.generate(ref, feats, max_new_tokens=15, do_sample=False)
    runs = {"encoder": 0, "cross_kv": 0}
    ours.net.encoder.layers[0].register_forward_hook(lambda *_: runs.__setitem__("encoder", runs["encoder"] + 1))
    cross = ours.net.dec_layers[1].cross_kv
    (cross.kv_proj if hasattr(cross, "kv_proj") else cross.k_proj).register_forward_hook(
        lambda *_: runs.__setitem__("cross_kv", runs["cross_kv"] + 1))
    have = ours.generate(feats, max_new_tokens=15)
    assert have.tolist() == want.tolist()
    assert len(set(have[0].tolist())) >= 4, "degenerate output would not exercise the cache"
    assert runs == {"encoder": 1, "cross_kv": 1}     # once for 15 decoding steps
    # WhisperForConditionalGeneration.generate returns the same tokens without the start token and
    # with each row's end token turned into padding
    whisper = ref.generate(feats, max_new_tokens=15, do_sample=False)
    new = have[:, 1:].clone()
    new[new == ours.generation_config.eos_token_id] = BASE["pad_token_id"]
    assert new.tolist() == whisper.tolist()


def test_features_of_another_length_are_refused_with_the_expected_shape(tmp_path):
    _, _, ours = WHISPER.make(tmp_path / "m", {})
    with pytest.raises(ValueError, match=r"input_features must be \[B, 8, 24\].*\[1, 8, 30\]"):
        ours(torch.zeros(1, 8, 30), decoder_input_ids=torch.tensor([[1]]))


def test_the_triton_kernels_under_the_interpreter_match_transformers(tmp_path):
    ref, folder, _ = WHISPER.make(tmp_path / "m", {}, seed=3, adjust=scaled(4.0))
    fused = runtime.load(compile_spec("specs/whisper.yaml", tmp_path / "art").directory, folder, triton=True)
    report = fused.kernel_report()
    assert report["encoder.gelu_2"] == "triton (interpreter)"              # after the stride-2 convolution
    assert report["cross_attention.attention"] == "triton (interpreter)"
    feats = features()
    dec = WHISPER.ids(batch=2, length=5, seed=1)
    mask = torch.ones_like(dec)
    mask[1, -2:] = 0
    try:
        got = fused(feats, decoder_input_ids=dec, decoder_attention_mask=mask).logits
        have = fused.generate(feats, max_new_tokens=6)
    finally:
        sys.modules[type(fused.net).__module__].kernels.force = None
    with torch.no_grad():
        want = ref(input_features=feats, decoder_input_ids=dec, decoder_attention_mask=mask).logits
    real = mask.bool()
    assert (got[real] - want[real]).abs().max().item() <= TOL
    assert have.tolist() == transformers.GenerationMixin.generate(ref, feats, max_new_tokens=6, do_sample=False).tolist()
