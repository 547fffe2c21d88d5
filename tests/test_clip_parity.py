"""specs/clip.yaml against transformers.CLIPModel on tiny random checkpoints: a padded batch of texts
and a batch of images of another size, both end-of-text poolings (the token of eos_token_id, and the
largest id for configs that say 2), both activations; the two towers are one layer used twice."""
from __future__ import annotations

import sys

import pytest
import torch

import runtime
from compiler.pipeline import compile_spec
from tests.family_parity import TOL, Family

transformers = pytest.importorskip("transformers")

VOCAB, EOT = 99, 98          # CLIP's end-of-text token is the last of its vocabulary
TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, bos_token_id=1, pad_token_id=0, eos_token_id=EOT)
VISION = dict(hidden_size=40, intermediate_size=56, num_hidden_layers=3, num_attention_heads=5, image_size=16,
              patch_size=4)
CLIP = Family("clip", transformers.CLIPConfig, transformers.CLIPModel,
              dict(text_config=TEXT, vision_config=VISION, projection_dim=24))
OUTPUTS = ["logits_per_image", "logits_per_text", "text_embeds", "image_embeds"]
CASES = {
    "end_of_text_token": (dict(text_config=TEXT), 0),
    # OpenAI's tokenizer pads with the end-of-text token itself: the first one is pooled
    "padded_with_end_of_text": (dict(text_config=TEXT), EOT),
    # configs written before Transformers 4.31 say eos_token_id 2: the largest id is pooled
    "legacy_eos_2": (dict(text_config={**TEXT, "eos_token_id": 2}), 0),
    "gelu_vision_tower": (dict(text_config=TEXT, vision_config={**VISION, "hidden_act": "gelu"}), 0),
}


def texts(pad_id: int):
    """Three right-padded texts (as CLIP's tokenizer pads), each ending in the end-of-text token."""
    ids = torch.randint(3, EOT, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0
    mask[2, -2:] = 0
    ids[mask == 0] = pad_id
    for row, length in enumerate(mask.sum(-1).tolist()):
        ids[row, length - 1] = EOT
    return ids, mask


def images(n=2):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case", list(CASES))
def test_clip_outputs_match_transformers_for_padded_texts_and_images(tmp_path, case):
    overrides, pad_id = CASES[case]
    ref, _, ours = CLIP.make(tmp_path / case, overrides)
    ids, mask = texts(pad_id)
    pixels = images()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    got = ours(ids, attention_mask=mask, pixel_values=pixels)
    assert list(got) == OUTPUTS
    assert got.logits_per_text.shape == (3, 2) and got.logits_per_image.shape == (2, 3)
    diffs = {k: (got[k] - want[k]).abs().max().item() for k in OUTPUTS}
    assert max(diffs.values()) <= TOL, diffs


def test_a_text_is_pooled_at_its_end_token_whatever_follows_and_its_batch(tmp_path):
    """A row's text embedding is that of the row alone: padding after the end token and the other
    rows change nothing; the images may come first and be fewer than the texts."""
    _, _, ours = CLIP.make(tmp_path / "m", {})
    ids, mask = texts(0)
    pixels = images(1)
    batched = ours(pixel_values=pixels, input_ids=ids, attention_mask=mask)
    for row, length in enumerate(mask.sum(-1).tolist()):
        alone = ours(ids[row:row + 1, :length], pixel_values=pixels)
        assert (batched.text_embeds[row] - alone.text_embeds[0]).abs().max().item() <= TOL
        assert (batched.logits_per_image[:, row] - alone.logits_per_image[:, 0]).abs().max().item() <= TOL


def test_a_mask_shaped_like_the_images_is_refused(tmp_path):
    _, _, ours = CLIP.make(tmp_path / "m", {})
    ids, _ = texts(0)
    with pytest.raises(ValueError, match=r"attention_mask must be \[3, 9\]"):
        ours(pixel_values=images(2), input_ids=ids, attention_mask=torch.ones(2, 9, dtype=torch.long))


def test_the_triton_kernels_under_the_interpreter_match_transformers(tmp_path):
    ref, folder, _ = CLIP.make(tmp_path / "m", {})
    fused = runtime.load(compile_spec("specs/clip.yaml", tmp_path / "art").directory, folder, triton=True)
    report = fused.kernel_report()
    assert report["model.normalize"] == "triton (interpreter)"
    assert report["encoder_layer_2.attention"] == "triton (interpreter)"     # the vision tower's instance
    ids, mask = texts(0)
    pixels = images()
    try:
        got = fused(ids, attention_mask=mask, pixel_values=pixels)
    finally:
        sys.modules[type(fused.net).__module__].kernels.force = None
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    diffs = {k: (got[k] - want[k]).abs().max().item() for k in OUTPUTS}
    assert max(diffs.values()) <= TOL, diffs
