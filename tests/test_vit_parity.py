"""specs/vit.yaml (patch conv, class token, learned positions, pre-LayerNorm) and its heads against
transformers.ViTModel / ViTForImageClassification on tiny random checkpoints."""
from __future__ import annotations

import pytest
import torch

import runtime
from compiler.pipeline import compile_spec
from tests.encoder_cases import TOL, max_diff
from tests.hf_checkpoints import randomize, save

transformers = pytest.importorskip("transformers")

BASE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, image_size=16,
            patch_size=4, num_channels=3)
CASES = {
    "base": ("ViTModel", ["last_hidden_state", "pooler_output"], {}),
    "image_classification": ("ViTForImageClassification", ["logits"], dict(num_labels=5)),
    "no_qkv_bias_one_channel": ("ViTForImageClassification", ["logits"], dict(qkv_bias=False, num_channels=1)),
}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return compile_spec("specs/vit.yaml", tmp_path_factory.mktemp("art") / "vit").directory


@pytest.mark.parametrize("case", list(CASES))
def test_vit_heads_match_transformers(tmp_path, artifact, case):
    cls_name, fields, extra = CASES[case]
    config = transformers.ViTConfig(**{**BASE, **extra})
    ref = randomize(getattr(transformers, cls_name)(config))
    folder = save(ref, tmp_path / case)
    ours = runtime.load(artifact, folder)
    pixels = torch.randn(2, config.num_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    got = ours(pixel_values=pixels)
    assert list(got) == fields
    with torch.no_grad():
        want = ref(pixel_values=pixels)
    diffs = max_diff(got, want, fields)
    assert max(diffs.values()) <= TOL, diffs
    if "logits" in fields:
        assert ours.id2label == {i: f"LABEL_{i}" for i in range(extra["num_labels"] if "num_labels" in extra else 2)}


def test_vit_refuses_token_inputs(tmp_path, artifact):
    ref = randomize(transformers.ViTModel(transformers.ViTConfig(**BASE)))
    ours = runtime.load(artifact, save(ref, tmp_path / "m"))
    with pytest.raises(TypeError, match="needs input_ids|pixel_values"):
        ours(torch.tensor([[1, 2, 3]]))


def test_an_image_of_another_size_is_refused_with_the_expected_shape(tmp_path, artifact):
    ref = randomize(transformers.ViTModel(transformers.ViTConfig(**BASE)))
    ours = runtime.load(artifact, save(ref, tmp_path / "m"))
    with pytest.raises(ValueError, match=r"pixel_values must be \[B, 3, 16, 16\].*\[1, 3, 32, 32\]"):
        ours(pixel_values=torch.zeros(1, 3, 32, 32))
