"""Weight rules that stack tensors over a placeholder (per-expert or per-head tensors -> one param)
and unstack one tensor into per-layer params, loaded from headers first and saved back; and the
warning an `ignore:` rule gives when it drops a tensor a param may need."""
from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import runtime
from compiler.errors import SpecError
from compiler.pipeline import compile_spec
from runtime.errors import CheckpointError, WeightWarning
from runtime.save import checkpoint_tensors

EXPERTS = """
spec: 1
name: experts
config:
  d: int
  num_experts: int
  heads: int
  head_dim: int
blocks:
  expert:
    inputs: {x: [B, S, d]}
    params: {scale: {tensor: [d]}}
    graph:
      - s: {op: param, w: scale}
      - x: {op: mul, a: x, b: s}
    outputs: [x]
model:
  inputs:
    x: {shape: [B, S, d], mask: null}
  params:
    stacked: {tensor: [num_experts, d]}
    experts: {block: expert, repeat: num_experts}
    q:       {linear: [d, heads * head_dim]}
  graph:
    - w: {op: param, w: stacked}
    - w: {op: select, x: w, dim: 0, index: 1}
    - y: {op: mul, a: x, b: w}
    - y: {op: repeat, block: experts, x: y}
    - y: {op: linear, x: y, w: q}
  outputs: [y]
weights:
  - {from: "moe.experts.{e}.scale", to: "stacked.weight", transforms: [{stack: {over: e}}]}
  - {from: "layer_scales", to: "experts.{i}.scale.weight", transforms: [{unstack: {over: i}}]}
  - {from: "attn.heads.{h}.q", to: "q.weight", transforms: [{stack: {over: h}}, {reshape: [heads * head_dim, d]}]}
"""
CONFIG = {"d": 4, "num_experts": 3, "heads": 2, "head_dim": 3}


def checkpoint(folder, **changes):
    gen = torch.Generator().manual_seed(0)
    tensors = {f"moe.experts.{e}.scale": torch.randn(4, generator=gen) for e in range(3)}
    tensors["layer_scales"] = torch.randn(3, 4, generator=gen)
    tensors.update({f"attn.heads.{h}.q": torch.randn(3, 4, generator=gen) for h in range(2)})
    for name, value in changes.items():
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    folder.mkdir(exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"d": 4, "num_experts": 3, "heads": 2, "head_dim": 3}')
    return folder, tensors


def spec(tmp_path, text=EXPERTS):
    (tmp_path / "experts.yaml").write_text(text)
    return tmp_path / "experts.yaml"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return compile_spec(spec(tmp_path_factory.mktemp("experts")), tmp_path_factory.mktemp("art") / "a").directory


def test_per_expert_and_per_head_tensors_stack_into_one_param_and_a_stacked_one_unstacks(tmp_path, artifact):
    folder, tensors = checkpoint(tmp_path / "ckpt")
    net = runtime.load(artifact, folder).net
    assert torch.equal(net.stacked.weight, torch.stack([tensors[f"moe.experts.{e}.scale"] for e in range(3)]))
    for i in range(3):
        assert torch.equal(net.experts[i].scale.weight, tensors["layer_scales"][i])
    assert torch.equal(net.q.weight, torch.cat([tensors[f"attn.heads.{h}.q"] for h in range(2)]))


def test_saving_unstacks_and_stacks_back_to_the_checkpoint_names(tmp_path):
    # per-head tensors kept as a [heads, head_dim, d] param: no reshape, which saving cannot undo
    text = (EXPERTS.replace(", {reshape: [heads * head_dim, d]}", "")
            .replace("q:       {linear: [d, heads * head_dim]}", "q:       {tensor: [heads, head_dim, d]}")
            .replace("    - y: {op: linear, x: y, w: q}\n", "    - p: {op: param, w: q}\n")
            .replace("  outputs: [y]", "  outputs: [y, p]"))
    art = compile_spec(spec(tmp_path, text), tmp_path / "art").directory
    folder, tensors = checkpoint(tmp_path / "ckpt")
    saved = checkpoint_tensors(runtime.load(art, folder))
    assert sorted(saved) == sorted(tensors)
    assert all(torch.equal(saved[n], tensors[n]) for n in tensors)
    runtime.save_pretrained(runtime.load(art, folder), tmp_path / "again")
    assert sorted(load_file(str(tmp_path / "again" / "model.safetensors"))) == sorted(tensors)


def test_a_gap_in_the_stacked_values_is_missing_and_a_wrong_count_is_mis_shaped(tmp_path, artifact):
    folder, _ = checkpoint(tmp_path / "gap", **{"moe.experts.1.scale": None})
    with pytest.raises(CheckpointError, match=r"missing[\s\S]*moe\.experts\.1\.scale \(needed with"):
        runtime.load(artifact, folder)
    folder, _ = checkpoint(tmp_path / "more", **{"moe.experts.3.scale": torch.zeros(4)})
    with pytest.raises(CheckpointError, match=r"stacked\.weight: the model wants \[3, 4\], the checkpoint gives \[4, 4\]"):
        runtime.load(artifact, folder)
    folder, _ = checkpoint(tmp_path / "named", **{"moe.experts.shared.scale": torch.zeros(4)})
    with pytest.raises(CheckpointError, match=r"moe\.experts\.shared\.scale \(stacked over \{e\}, whose values must be"):
        runtime.load(artifact, folder)


@pytest.mark.parametrize("rule, message", [
    ('{from: "moe.experts.{e}.scale", to: "stacked.weight", transforms: [{stack: {over: k}}]}',
     "stack over 'k': its 'from' templates have no placeholder {k}"),
    ('{from: "moe.experts.{e}.scale", to: "stacked.{e}.weight", transforms: [{stack: {over: e}}]}',
     "target 'stacked.{e}.weight' must use the placeholders [], it uses ['e']"),
])
def test_a_stacked_placeholder_must_be_on_its_side_only(tmp_path, rule, message):
    text = EXPERTS.replace('{from: "moe.experts.{e}.scale", to: "stacked.weight", transforms: [{stack: {over: e}}]}', rule)
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]").replace("{", r"\{")
                       .replace("}", r"\}")):
        compile_spec(spec(tmp_path, text), tmp_path / "art")


def test_an_ignore_rule_dropping_a_tensor_of_a_needed_shape_warns_and_says_so_in_the_error(tmp_path):
    text = EXPERTS.replace('  - {from: "layer_scales", to: "experts.{i}.scale.weight", transforms: [{unstack: {over: i}}]}',
                           '  - {from: "layer_scales", ignore: "an old copy"}\n'
                           '  - {from: "scales.{i}", to: "experts.{i}.scale.weight"}')
    art = compile_spec(spec(tmp_path, text), tmp_path / "art").directory
    folder, _ = checkpoint(tmp_path / "ckpt", **{"layer_scales": torch.zeros(4)})
    with pytest.warns(WeightWarning, match=r"the ignore rule for layer_scales \('an old copy'\) drops a tensor of "
                                           r"shape \[4\], the shape of param experts\.0\.scale\.weight"):
        with pytest.raises(CheckpointError, match=r"experts\.0\.scale\.weight \(an ignore rule dropped layer_scales"):
            runtime.load(art, folder)
    folder, _ = checkpoint(tmp_path / "fine", layer_scales=torch.zeros(4), **{f"scales.{i}": torch.ones(4) for i in range(3)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightWarning)
        runtime.load(art, folder)       # every param fed: dropping the copy is what the rule says
