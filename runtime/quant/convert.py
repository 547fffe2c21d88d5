"""`quantize_model`: the linears, a mixture of experts' grouped linears (and optionally the embedding)
of a loaded model swapped for their quantized forms, in place.

Which modules: an artifact compiled with quantization (the compiler's quantize pass; `graphspec
compile --quant`, `from_pretrained(..., quantization=...)`) lists its quantized params in
interface.json with their roles, and only those are swapped. For an artifact compiled without it,
the roles are read off the module types (every linear; the one shaped like the largest embedding
table is the LM head, one with as many outputs as a grouped linear has experts (or fused from such
a one) a router; grouped linears are experts). Either way, a module whose path or role the config's
`modules_to_not_convert` names stays in float."""
from __future__ import annotations

import re
import warnings

import torch
from torch import nn

from runtime.ops import FusedLinear, GroupedLinear, Linear
from runtime.quant.config import QuantConfig
from runtime.quant.linear import QuantEmbedding, QuantGroupedLinear, QuantLinear
from runtime.quant.schemes import quantize
from runtime.rules import Template

LINEARS = (Linear, FusedLinear)
_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)")       # a layer index in a module path: layers.3.mlp -> layers.*.mlp


def _output_embeddings(net: nn.Module) -> set[str]:
    """Paths of the linears shaped like the largest embedding table ([vocab, hidden]): the LM head,
    tied to that table or not."""
    tables = [m.weight.shape for m in net.modules() if isinstance(m, nn.Embedding)]
    if not tables:
        return set()
    vocab = max(tables, key=lambda s: s[0])
    return {path for path, m in net.named_modules() if isinstance(m, LINEARS) and tuple(m.weight.shape) == tuple(vocab)}


def _roles_by_type(net: nn.Module) -> dict[str, str]:
    heads = _output_embeddings(net)
    # a router: a linear with one output per expert of the network's grouped linears
    experts = {m.num for m in net.modules() if isinstance(m, GroupedLinear)}
    out = {}
    for path, m in net.named_modules():
        if isinstance(m, LINEARS):
            # a router fused with another linear reading the same rows (a shared expert's gate)
            sizes = [m.weight.shape[0], *(getattr(m, "parts", None) or {}).values()]
            out[path] = "lm_head" if path in heads else "router" if experts.intersection(sizes) else "linear"
        elif isinstance(m, GroupedLinear):
            out[path] = "experts"
        elif isinstance(m, nn.Embedding):
            out[path] = "embedding"
    return out


def _roles_marked(net: nn.Module, marked: dict[str, str]) -> dict[str, str]:
    """Concrete module paths of the compiler's param templates (`layers.{i}.attn.qkv_proj`)."""
    templates = [(Template(t), role) for t, role in marked.items()]
    out = {}
    for path, _ in net.named_modules():
        role = next((r for t, r in templates if t.match(path) is not None), None)
        if role is not None:
            out[path] = role
    return out


def plan(net: nn.Module, config: QuantConfig, marked: dict[str, str] | None = None) -> dict[str, str]:
    """Module path -> "linear" | "lm_head" | "router" | "experts" | "embedding": what `quantize_model` will quantize.
    `marked`: the compiler's param templates and roles (interface.json), or None to read roles off
    the module types."""
    roles = _roles_by_type(net) if marked is None else _roles_marked(net, marked)
    return {path: role for path, role in roles.items() if config.admits(role) and not config.skipped(path, role)}


def _whole_rows(model, path: str, module: nn.Module, scheme) -> dict | None:
    """Under tensor parallelism, the int8 tensors of a module whose rank holds a slice of its input
    features (a row-parallel linear): one scale spans a whole row, so the rows' extremes are taken
    over every rank (an all-reduce) and each rank stores what the single process would of its slice.
    None where nothing needs it (int4 groups lie within a slice: a rank's groups are the single
    process's)."""
    shard, group = model.shard, model.group
    if scheme.kind != "int8" or shard is None or group is None:
        return None
    parts = getattr(module, "parts", None)
    parent = path.rpartition(".")[0]
    # the plan names checkpoint-shaped tensors: a fused linear's are its members'
    tensors = [f"{parent}.{p}.weight".lstrip(".") for p in parts] if parts else [f"{path}.weight"]
    last = module.weight.dim() - 1
    if not any(isinstance(h, tuple) and h[0] == last for h in map(shard.held, tensors)):
        return None
    w = module.weight.detach()
    amax = w.reshape(-1, w.shape[-1]).to(torch.float32).abs().amax(dim=1)
    torch.distributed.all_reduce(amax, op=torch.distributed.ReduceOp.MAX, group=group)
    stored = quantize(w.reshape(-1, w.shape[-1]), scheme, path, row_amax=amax)
    return {name: t.view(*w.shape[:-1], *t.shape[1:]) for name, t in stored.items()}


def quantize_model(model, config=None) -> "object":
    """Quantize `model` (a CompiledModel) in place and return it.

    `config`: "int8", "int4", a Transformers-style quantization_config dict or a QuantConfig; None:
    the one the artifact was compiled with. Weights shared between modules (a tied embedding and LM
    head) are quantized once and shared. The model gains `quantization` (the QuantConfig),
    `quantization_config` (its dict) and `load_report["quantized"]` (module path -> its role); a lookup
    table the format cannot hold, asked for by quantize_embedding, stays in float, named with why in
    `load_report["kept_in_float"]` and a warning (any other module the format cannot hold is an error)."""
    if getattr(model, "quantization", None) is not None:
        # its quantized modules hold no float weight to quantize again, and the model would carry one
        # config while holding another format
        raise ValueError(f"quantize_model: the model is already quantized ({model.quantization.scheme.name}); "
                         "load the float checkpoint again to quantize it another way")
    compiled = model.interface.quantization
    if config is None:
        if compiled is None:
            raise ValueError(f"quantize_model: spec '{model.interface.name}' was compiled without quantization; "
                             "pass a config ('int8', 'int4' or a quantization_config dict)")
        config = compiled.config
    config = QuantConfig.parse(config)
    net = model.net
    done: dict[tuple, dict] = {}     # (id(float weight), scheme) -> its quantized tensors
    chosen = plan(net, config, None if compiled is None else compiled.params)
    # every shape first: a refused one leaves the model as it was
    problem, kept = None, {}
    for path, kind in list(chosen.items()):
        try:
            config.scheme_for(kind).check_shape(tuple(net.get_submodule(path).weight.shape[-2:]), path,
                                                _INDEX.sub("*", path))
        except ValueError as err:
            if kind != "embedding":
                problem = err
                break
            # quantize_embedding asks for every lookup table; one the format cannot hold (a relative
            # position bias a few heads wide) is a table of no weight: kept in float, and said so
            kept[path] = str(err)
            del chosen[path]
    if model.shard is not None and model.group is not None:
        # ranks hold slices of other widths where a split is uneven: all stop, none waits in a collective
        refused = torch.tensor([problem is not None], dtype=torch.int32)
        torch.distributed.all_reduce(refused, op=torch.distributed.ReduceOp.MAX, group=model.group)
        if refused.item() and problem is None:
            problem = ValueError("quantization: another rank cannot quantize its slice of a module (its error "
                                 "names the module); every rank stops")
    if problem is not None:
        raise problem
    for path, kind in chosen.items():
        module = net.get_submodule(path)
        scheme = config.scheme_for(kind)
        shared = done.get((id(module.weight), scheme)) or _whole_rows(model, path, module, scheme)
        if kind == "embedding":
            new = QuantEmbedding.from_float(module, scheme, path, stored=shared)
        elif kind == "experts":
            new = QuantGroupedLinear.from_float(module, scheme, path, stored=shared)
        else:
            new = QuantLinear.from_float(module, scheme, path, stored=shared)
        done.setdefault((id(module.weight), scheme), new.stored())
        parent, _, name = path.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, name, new)
    model.quantization = config
    model.quantization_config = config.to_dict()
    model.load_report["quantized"] = chosen
    if kept:
        model.load_report["kept_in_float"] = kept
        warnings.warn("quantize_embedding: kept in float, the format cannot hold them: " + "; ".join(kept.values()))
    return model
