"""Block options: a block declares `options:` (name -> default), each use sets them with `with:`, and
uses with different values are separate instances decided at compile time. A text and a vision tower
of different widths share one written layer."""
from __future__ import annotations

import pytest
import torch

import runtime
from compiler.errors import SpecError
from compiler.lower import lower
from compiler.pipeline import compile_spec
from compiler.spec import load_spec

TOWERS = """
spec: 1
name: towers
config:
  text_width: int
  vision_width: int
  heads: int
  head_dim: int
  eps: float = 1e-5
blocks:
  layer:
    options: {width: text_width, causal: true, gated: false}
    inputs: {x: [B, S, width]}
    params:
      norm: {norm: width, bias: true}
      q:    {linear: [width, heads * head_dim]}
      k:    {linear: [width, heads * head_dim]}
      v:    {linear: [width, heads * head_dim]}
      out:  {linear: [heads * head_dim, width]}
      gate: {linear: [width, width], when: gated}
    graph:
      - h: {op: layer_norm, x: x, w: norm, eps: eps}
      - q: {op: linear, x: h, w: q}
      - k: {op: linear, x: h, w: k}
      - v: {op: linear, x: h, w: v}
      - q: {op: split_heads, x: q, heads: heads}
      - k: {op: split_heads, x: k, heads: heads}
      - v: {op: split_heads, x: v, heads: heads}
      - y: {op: attention, q: q, k: k, v: v, causal: causal}
      - y: {op: merge_heads, x: y}
      - y: {op: linear, x: y, w: out}
      - g: {op: linear, x: y, w: gate, when: gated}
      - y: {op: mul, a: y, b: g, when: gated}
      - x: {op: add, a: x, b: y}
    outputs: [x]
  tower:
    options: {width: text_width, causal: true}
    inputs: {x: [B, S, width]}
    params:
      layers: {block: layer, repeat: 2, with: {width: width, causal: causal}}
    graph:
      - x: {op: repeat, block: layers, x: x}
    outputs: [x]
model:
  inputs:
    text:   {shape: [B, S, text_width], mask: text_mask}
    pixels: {shape: [B, P, vision_width], mask: pixel_mask}
  params:
    text_tower:   {block: tower}
    vision_tower: {block: tower, with: {width: vision_width, causal: false}}
  graph:
    - t: {op: call, block: text_tower, x: text}
    - v: {op: call, block: vision_tower, x: pixels}
  outputs: [t, v]
weights:
  - {from: "{a}.{b}.{c}.{d}.{t}", to: "{a}.{b}.{c}.{d}.{t}"}
"""


def towers(tmp_path, text=TOWERS):
    path = tmp_path / "towers.yaml"
    path.write_text(text)
    return path


def test_uses_with_different_option_values_are_separate_instances(tmp_path):
    ir = lower(load_spec(towers(tmp_path)))
    assert [n for n in ir.blocks] == ["layer", "layer_2", "tower", "tower_2", "model"]
    text_layer, vision_layer = ir.blocks["layer"], ir.blocks["layer_2"]
    assert str(text_layer.options["width"]) == "text_width" and str(text_layer.options["causal"]) == "true"
    assert str(vision_layer.options["width"]) == "vision_width" and str(vision_layer.options["causal"]) == "false"
    assert [str(d) for d in vision_layer.values["x"].type.shape] == ["B", "S", "vision_width"]
    attention = {b: next(n for n in ir.blocks[b].order() if n.op == "attention") for b in ("layer", "layer_2")}
    assert str(attention["layer"].attrs["causal"]) == "true" and str(attention["layer_2"].attrs["causal"]) == "false"
    # `gated` is false in both: decided at compile time, the gate is in neither instance
    assert "gate" not in text_layer.params and not any(n.when for n in text_layer.order())


def test_each_instance_is_its_own_class_and_each_tower_computes_at_its_own_width(tmp_path):
    art = compile_spec(towers(tmp_path), tmp_path / "art").directory
    source = (art / "model.py").read_text()
    assert "class Layer(nn.Module):" in source and "class Layer2(nn.Module):" in source
    assert "self.vision_tower = Tower2(cfg)" in source
    assert "; layer with width=vision_width, causal=false, gated=false" in source
    model = runtime.init_random(art, {"text_width": 8, "vision_width": 12, "heads": 2, "head_dim": 4})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():     # params are trainable, as Transformers' are
        for p in model.net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    assert model.net.text_tower.layers[0].out.weight.shape == (8, 8)
    assert model.net.vision_tower.layers[1].out.weight.shape == (12, 8)
    text, pixels = torch.randn(2, 5, 8), torch.randn(2, 3, 12)
    out = model(text, pixels=pixels)
    assert out.t.shape == (2, 5, 8) and out.v.shape == (2, 3, 12)
    # causal text: position 0 does not see position 1; the vision tower is bidirectional
    changed = text.clone()
    changed[:, 1:] += torch.randn(2, 4, 8)
    assert torch.equal(model(changed, pixels=pixels).t[:, 0], out.t[:, 0])
    moved = pixels.clone()
    moved[:, 1:] += torch.randn(2, 2, 12)
    assert not torch.allclose(model(text, pixels=moved).v[:, 0], out.v[:, 0])


def test_uses_that_agree_share_one_instance_and_options_can_turn_params_on(tmp_path):
    text = TOWERS.replace("vision_tower: {block: tower, with: {width: vision_width, causal: false}}",
                          "vision_tower: {block: tower, with: {width: text_width}}")
    text = text.replace("    pixels: {shape: [B, P, vision_width], mask: pixel_mask}",
                        "    pixels: {shape: [B, P, text_width], mask: pixel_mask}")
    ir = lower(load_spec(towers(tmp_path, text)))
    assert [n for n in ir.blocks] == ["layer", "tower", "model"]
    gated = TOWERS.replace("layers: {block: layer, repeat: 2, with: {width: width, causal: causal}}",
                           "layers: {block: layer, repeat: 2, with: {width: width, causal: causal, gated: true}}")
    ir = lower(load_spec(towers(tmp_path, gated)))
    layer = ir.blocks["layer"]
    assert "gate" in layer.params and not layer.params["gate"].when
    assert [n.op for n in layer.order()][-3:] == ["linear", "mul", "add"]


@pytest.mark.parametrize("edit, message", [
    (("with: {width: vision_width, causal: false}", "with: {width: vision_width, casual: false}"),
     "block 'tower' has no option 'casual' (its options: width, causal); did you mean 'causal'?"),
    (("options: {width: text_width, causal: true}\n    inputs", "options: {heads: 1, causal: true}\n    inputs"),
     "option 'heads' of block 'tower' has the name of a config entry"),
    (("options: {width: text_width, causal: true}\n    inputs", "options: {width: depth, causal: true}\n    inputs"),
     "the default of option 'width' may use config names only; 'depth' is none"),
])
def test_option_mistakes_are_reported_at_their_line(tmp_path, edit, message):
    with pytest.raises(SpecError) as info:
        lower(load_spec(towers(tmp_path, TOWERS.replace(*edit))))
    assert message in str(info.value) and "towers.yaml:" in str(info.value)
