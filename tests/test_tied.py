"""`tied` shares every tensor the two params both have: weight and bias of two linears, the weight
alone of a linear tied to an embedding (an LM head), and a per-config bias where both have it."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import runtime
from compiler.pipeline import compile_spec
from runtime.errors import CheckpointError

TIED = """
spec: 1
name: tied
config:
  d: int
  vocab: int
  biased: bool = true
blocks: {}
model:
  inputs:
    input_ids: {shape: [B, S], dtype: int}
  params:
    embed: {embedding: [vocab, d]}
    proj:  {linear: [d, d], bias: biased}
    again: {linear: [d, d], bias: biased, tied: {to: proj}}
    head:  {linear: [d, vocab], bias: true, tied: {to: embed}}
  graph:
    - x:      {op: embedding, ids: input_ids, w: embed}
    - x:      {op: linear, x: x, w: proj}
    - x:      {op: linear, x: x, w: again}
    - logits: {op: linear, x: x, w: head}
  outputs: [logits]
weights:
  - {from: "embed.weight", to: "embed.weight"}
  - {from: "proj.{t}", to: "proj.{t}"}
  - {from: "head.bias", to: "head.bias"}
"""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tied")
    (folder / "tied.yaml").write_text(TIED)
    return compile_spec(folder / "tied.yaml", folder / "art").directory


def checkpoint(folder, biased=True, **extra):
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    tensors = {"embed.weight": torch.randn(11, 8, generator=gen), "proj.weight": torch.randn(8, 8, generator=gen),
               "head.bias": torch.randn(11, generator=gen), **extra}
    if biased:
        tensors["proj.bias"] = torch.randn(8, generator=gen)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(f'{{"d": 8, "vocab": 11, "biased": {str(biased).lower()}}}')
    return folder


def test_a_tie_between_two_linears_shares_weight_and_bias(tmp_path, artifact):
    model = runtime.load(artifact, checkpoint(tmp_path / "ckpt"))
    net = model.net
    assert net.again.weight is net.proj.weight and net.again.bias is net.proj.bias
    # a linear tied to an embedding shares the weight; its bias is its own
    assert net.head.weight is net.embed.weight and net.head.bias is not None
    ids = torch.tensor([[1, 2, 3]])
    x = net.proj(net.proj(net.embed(ids)))
    torch.testing.assert_close(model(ids).logits, x @ net.embed.weight.T + net.head.bias)


def test_a_bias_the_config_turns_off_is_shared_by_neither(tmp_path, artifact):
    source = (artifact / "model.py").read_text()
    assert "if self.again.bias is not None and self.proj.bias is not None: self.again.bias = self.proj.bias" in source
    net = runtime.load(artifact, checkpoint(tmp_path / "ckpt", biased=False)).net
    assert net.again.weight is net.proj.weight and net.again.bias is None and net.proj.bias is None


def test_a_tied_tensor_in_the_checkpoint_without_a_rule_is_unexpected(tmp_path, artifact):
    with pytest.raises(CheckpointError, match="again.bias"):
        runtime.load(artifact, checkpoint(tmp_path / "ckpt", **{"again.bias": torch.zeros(8)}))
