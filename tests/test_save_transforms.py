"""Saving undoes every weight transform: reshape and permute back to the recorded source shapes, a
concat split back at the sources' sizes; a model made without a checkpoint says which rule it cannot
invert."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import runtime
from compiler.pipeline import compile_spec
from runtime.errors import CheckpointError
from runtime.safetensors_io import open_checkpoint

TOY = """\
spec: 1
name: toy_layouts
matches: {model_type: [toy_layouts]}
config:
  d:     {hf: d, type: int}
  heads: {hf: heads, type: int}
blocks: {}
model:
  inputs:
    input_ids: {shape: [B, S], dtype: int}
  params:
    embed: {embedding: [11, d]}
    proj:  {linear: [d, d]}
    mix:   {linear: [d, d]}
  graph:
    - x:      {op: embedding, ids: input_ids, w: embed}
    - x:      {op: linear, x: x, w: proj}
    - logits: {op: linear, x: x, w: mix}
  outputs: [logits]
weights:
  - {from: "embed", to: "embed.weight"}
  # stored per head, heads second: [d / heads, heads, d] -> [heads, d / heads, d] -> [d, d]
  - {from: "proj_by_head", to: "proj.weight", transforms: [{permute: [1, 0, 2]}, {reshape: [d, d]}]}
  # stored as two row blocks of different heights
  - {from: ["mix_top", "mix_rest"], to: "mix.weight", transforms: [{concat: {dim: 0}}]}
"""


@pytest.fixture
def artifact(tmp_path):
    spec = tmp_path / "toy_layouts.yaml"
    spec.write_text(TOY)
    return compile_spec(spec, tmp_path / "art").directory


def test_reshape_permute_and_concat_are_undone_on_save(tmp_path, artifact):
    d, heads = 6, 2
    gen = torch.Generator().manual_seed(0)
    source = {"embed": torch.randn(11, d, generator=gen),
              "proj_by_head": torch.randn(d // heads, heads, d, generator=gen),
              "mix_top": torch.randn(2, d, generator=gen), "mix_rest": torch.randn(d - 2, d, generator=gen)}
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file(source, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "toy_layouts", "d": d, "heads": heads}))
    model = runtime.load(artifact, folder)
    assert torch.equal(model.net.proj.weight, source["proj_by_head"].permute(1, 0, 2).reshape(d, d))
    saved = model.save_pretrained(tmp_path / "saved")
    with open_checkpoint(saved) as ckpt:
        assert sorted(ckpt.tensors) == sorted(source)
        for name, tensor in source.items():
            assert torch.equal(ckpt.get(name), tensor), name
    again = runtime.load(artifact, saved)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_a_model_without_a_checkpoint_names_the_rule_it_cannot_invert(tmp_path, artifact):
    model = runtime.init_random(artifact, {"model_type": "toy_layouts", "d": 4, "heads": 2})
    with pytest.raises(CheckpointError, match="proj_by_head.*reshape|mix_top.*concat"):
        model.save_pretrained(tmp_path / "saved")
