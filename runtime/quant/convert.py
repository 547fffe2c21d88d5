"""`quantize_model`: the linears (and optionally the embedding) of a loaded model swapped for their
quantized forms, in place. Stands in for the IR pass that will rewrite linears at compile time."""
from __future__ import annotations

import fnmatch

from torch import nn

from runtime.ops import FusedLinear, Linear
from runtime.quant.config import QuantConfig
from runtime.quant.linear import QuantEmbedding, QuantLinear

LINEARS = (Linear, FusedLinear)


def _output_embeddings(net: nn.Module) -> set[str]:
    """Paths of the linears shaped like the largest embedding table ([vocab, hidden]): the LM head,
    tied to that table or not."""
    tables = [m.weight.shape for m in net.modules() if isinstance(m, nn.Embedding)]
    if not tables:
        return set()
    vocab = max(tables, key=lambda s: s[0])
    return {path for path, m in net.named_modules() if isinstance(m, LINEARS) and tuple(m.weight.shape) == tuple(vocab)}


def plan(net: nn.Module, config: QuantConfig) -> dict[str, str]:
    """Module path -> "linear" | "lm_head" | "embedding": what `quantize_model` will quantize."""
    heads = _output_embeddings(net)
    out = {}
    for path, m in net.named_modules():
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in config.skip):
            continue
        if isinstance(m, LINEARS):
            kind = "lm_head" if path in heads else "linear"
            if kind == "linear" or config.lm_head:
                out[path] = kind
        elif isinstance(m, nn.Embedding) and config.embedding:
            out[path] = "embedding"
    return out


def quantize_model(model, config) -> "object":
    """Quantize `model` (a CompiledModel) in place and return it.

    `config`: "int8", "int4", a Transformers-style quantization_config dict or a QuantConfig.
    Weights shared between modules (a tied embedding and LM head) are quantized once and shared.
    The model gains `quantization` (the QuantConfig), `quantization_config` (its dict) and
    `load_report["quantized"]` (module path -> linear | lm_head | embedding)."""
    config = QuantConfig.parse(config)
    net = model.net
    done: dict[int, dict] = {}       # id(float weight) -> its quantized tensors
    chosen = plan(net, config)
    for path, kind in chosen.items():
        module = net.get_submodule(path)
        shared = done.get(id(module.weight))
        if kind == "embedding":
            new = QuantEmbedding.from_float(module, config.scheme, path, stored=shared)
        else:
            new = QuantLinear.from_float(module, config.scheme, path, stored=shared)
        done.setdefault(id(module.weight), new.stored())
        parent, _, name = path.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, name, new)
    model.quantization = config
    model.quantization_config = config.to_dict()
    model.load_report["quantized"] = chosen
    return model
