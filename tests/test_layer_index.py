"""The layer index (`layer`) in op attributes: allowed only under a repeat, given to each layer's module."""
from __future__ import annotations

from pathlib import Path

import pytest

from compiler.emit import emit_model
from compiler.errors import SpecError
from compiler.lower import lower
from compiler.spec import load_spec

LLAMA = Path("specs/llama.yaml").read_text()
ATTENTION_LINE = "      - y: {op: attention, q: q, k: k, v: v, causal: true, scale: head_dim ** -0.5, dropout: attention_dropout, label: attention}"


def lowered(text):
    spec = load_spec("layered.yaml", text)
    return spec, lower(spec)


def test_each_layer_module_is_built_with_its_index_and_reads_it_in_forward():
    text = LLAMA.replace(ATTENTION_LINE, ATTENTION_LINE[:-1] + ", window: 4 if layer % 2 == 0 else null}")
    spec, ir = lowered(text)
    source = emit_model(ir, "layered.yaml")
    assert "window=4 if self.layer % 2 == 0 else None" in source
    namespace: dict = {}
    exec(compile(source, "model.py", "exec"), namespace)
    import torch
    with torch.device("meta"):
        config = dict(vocab_size=11, hidden_size=8, intermediate_size=16, num_layers=3, num_heads=2, num_kv_heads=2,
                      head_dim=4, rms_norm_eps=1e-6, rope_theta=1e4, rope_scaling=None, rope_type="default",
                      attention_bias=False, mlp_bias=False, tie_word_embeddings=False, hidden_act="silu",
                      attention_dropout=0.0, initializer_range=0.02)
        net = namespace["MODEL"](namespace["Config"](**config))
    assert [layer.attn.layer for layer in net.layers] == [0, 1, 2]


def test_layer_index_outside_a_repeat_is_an_error_at_its_line():
    text = LLAMA.replace("    - logits:   {op: linear, x: x, w: lm_head}",
                         "    - logits:   {op: linear, x: x, w: lm_head}\n"
                         "    - logits:   {op: scale, x: logits, by: layer + 1}")
    with pytest.raises(SpecError) as info:
        lowered(text)
    message = str(info.value)
    assert "layered.yaml:" in message and "model.graph[5].logits.by" in message
    assert "exists only inside repeated blocks" in message


def test_a_block_using_the_layer_index_may_not_also_be_called_outside_a_repeat():
    text = LLAMA.replace(ATTENTION_LINE, ATTENTION_LINE.replace("head_dim ** -0.5", "1 / (layer + 1)"))
    text = text.replace("    lm_head: {linear: [hidden_size, vocab_size], tied: {to: embed, when: tie_word_embeddings}}",
                        "    lm_head: {linear: [hidden_size, vocab_size], tied: {to: embed, when: tie_word_embeddings}}\n"
                        "    extra: {block: decoder_layer}")
    text = text.replace("    - x:        {op: repeat, block: layers, x: x, cos: cos, sin: sin}",
                        "    - x:        {op: repeat, block: layers, x: x, cos: cos, sin: sin}\n"
                        "    - x:        {op: call, block: extra, x: x, cos: cos, sin: sin}")
    with pytest.raises(SpecError, match="block 'attention', which the model reaches without a repeat"):
        lowered(text)


def test_layer_index_is_not_a_shape_name_and_not_a_config_name():
    with pytest.raises(SpecError, match="unknown config name 'layer'"):
        lowered(LLAMA.replace("norm:    {norm: hidden_size}", "norm:    {norm: hidden_size + layer}"))
    with pytest.raises(SpecError, match="config name 'layer' is reserved"):
        lowered(LLAMA.replace("config:\n", "config:\n  layer: {hf: layer, type: int, default: 0}\n"))
