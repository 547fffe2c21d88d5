"""Params the fusion pass concatenated (`ops.FusedLinear`), seen by the loader as their members.

The spec's weight rules name the members (`layers.0.attn.q_proj.weight`); the module holds one
`layers.0.attn.qkv_proj.weight`. Planning checks the members' shapes against the checkpoint, and
loading concatenates them on dim 0 once all are read, so nothing in the spec mentions the fusion.
"""
from __future__ import annotations

import torch
from torch import nn

from runtime.ops import FusedLinear


def member_layout(module: nn.Module) -> dict[str, tuple[str, int, tuple]]:
    """member param name -> (fused param name, position, member shape)."""
    out = {}
    for path, m in module.named_modules():
        if not isinstance(m, FusedLinear):
            continue
        parent = path.rpartition(".")[0]
        prefix = f"{parent}." if parent else ""
        in_features = m.weight.shape[1]
        for i, (part, size) in enumerate(m.parts.items()):
            out[f"{prefix}{part}.weight"] = (f"{path}.weight", i, (size, in_features))
            if m.bias is not None:
                out[f"{prefix}{part}.bias"] = (f"{path}.bias", i, (size,))
    return out


def member_slices(module: nn.Module) -> dict[str, tuple[str, int, tuple]]:
    """member param name -> (fused param name, first row in it, member shape)."""
    out, used = {}, {}
    for member, (fused, _, shape) in sorted(member_layout(module).items(), key=lambda kv: (kv[1][0], kv[1][1])):
        out[member] = (fused, used.get(fused, 0), shape)
        used[fused] = out[member][1] + shape[0]
    return out


def virtual_params(module: nn.Module) -> dict[str, tuple]:
    """Param name -> shape, with each fused param replaced by its members."""
    layout = member_layout(module)
    fused = {f for f, _, _ in layout.values()}
    params = {n: tuple(p.shape) for n, p in module.named_parameters() if n not in fused}
    params.update({member: shape for member, (_, _, shape) in layout.items()})
    return params


def assemble(module: nn.Module, pending: dict[str, torch.Tensor], set_param) -> None:
    """Concatenate the loaded members into their fused params."""
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for member, (fused, i, _) in member_layout(module).items():
        if member in pending:
            parts.setdefault(fused, {})[i] = pending.pop(member)
    for fused, by_index in parts.items():
        tensor = torch.cat([by_index[i] for i in sorted(by_index)], dim=0)
        set_param(module, fused, nn.Parameter(tensor))
