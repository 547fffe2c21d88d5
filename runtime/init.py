"""Initialising params without a checkpoint, as the spec's `init:` says (the reference's _init_weights).

Weights of linear, embedding, conv and bare-tensor params are drawn from the declared distribution
(normal or truncated at +-2, mean 0, std `init.std`); biases are 0; norm scales are `init.norm` (1
unless declared, 0 for scales stored as an offset from one); `init.params` gives single tensors
their own std or a constant. Fused projections are initialised member by member, each under its
own name. Used by from_config, new heads (`init_new_head=True`) and new embedding rows.
"""
from __future__ import annotations

import torch
from torch import nn

from runtime.fused_params import member_slices
from runtime.ops import Norm
from runtime.rules import template_regex

DEFAULT_STD = 0.02      # Transformers' PretrainedConfig default initializer_range


def _rule(interface, name: str):
    init = interface.init
    if init is None:
        return None
    for template, rule in init.params.items():
        if template_regex(template).match(name):
            return rule
    return None


def initial_value(model, name: str, shape, dtype, device, owner: nn.Module | None = None) -> torch.Tensor:
    """A fresh value for param `name` (the spec's name: a fused projection's members by their own)."""
    interface, config = model.interface, model.config
    init = interface.init
    rule = _rule(interface, name)
    out = torch.empty(shape, dtype=torch.float32, device=device)
    if rule is not None and rule[0] == "value":
        return out.fill_(float(rule[1].evaluate(config))).to(dtype)
    leaf = name.rpartition(".")[2]
    if rule is None and leaf == "bias":
        return out.zero_().to(dtype)
    if rule is None and isinstance(owner, Norm):
        norm = 1.0 if init is None or init.norm is None else float(init.norm.evaluate(config))
        return out.fill_(norm).to(dtype)
    if rule is not None:
        std = float(rule[1].evaluate(config))
    elif init is not None and init.std is not None:
        std = float(init.std.evaluate(config))
    else:
        std = DEFAULT_STD
    if init is not None and init.distribution == "trunc_normal":
        # drawn in fp32 and truncated at +-2 (absolute), as the references' trunc_normal_ calls are
        nn.init.trunc_normal_(out, 0.0, std, -2.0, 2.0)
    else:
        out.normal_(0.0, std)
    return out.to(dtype)


def initialise(model, names: list[str] | None = None) -> list[str]:
    """Fresh values for the named params (spec names; all of them when None), in place. Tied aliases
    follow their owners. Returns the names initialised."""
    net = model.net
    layout = member_slices(net)
    fused = {f for f, _, _ in layout.values()}
    from runtime.weights import tied_params
    aliases = tied_params(net)
    everything = [n for n, _ in net.named_parameters() if n not in fused and n not in aliases] + list(layout)
    chosen = everything if names is None else list(names)
    with torch.no_grad():
        for name in chosen:
            if name in layout:
                fused_name, start, shape = layout[name]
                target = net.get_parameter(fused_name)
                owner = net.get_submodule(fused_name.rpartition(".")[0])
                target[start:start + shape[0]] = initial_value(model, name, shape, target.dtype, target.device, owner)
                continue
            owner_path, _, leaf = name.rpartition(".")
            owner = net.get_submodule(owner_path) if owner_path else net
            p = getattr(owner, leaf)
            p.copy_(initial_value(model, name, p.shape, p.dtype, p.device, owner))
    return chosen
