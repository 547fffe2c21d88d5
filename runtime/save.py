"""Saving a model back in its checkpoint's layout: the weight rules run backwards.

Each rule's transforms are undone (transpose, permute and split invert without extra facts; a
concat or reshape needs the source shapes, which a model alone does not know, so such rules are
refused by name). A param that several rules feed (a per-expert and a stacked layout of the same
experts) is written by the first of them only, the layout a spec lists first. config.json is written
under the first key each config entry is read from.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from runtime.errors import CheckpointError
from runtime.fused_params import member_layout
from runtime.rules import fill, invert_transforms, stacking, template_regex, transform_name
from runtime.weights import _active

NEEDS_SOURCE_SHAPES = ("concat", "reshape")


def hf_config(interface, values: dict) -> dict:
    out: dict = {}
    matches = interface.matches
    if matches.get("architectures"):
        out["architectures"] = [matches["architectures"][0]]
    if matches.get("model_type"):
        out["model_type"] = matches["model_type"][0]
    for entry in interface.config.values():
        value = values.get(entry.name)
        if not entry.hf or value is None:
            continue
        node, *path = entry.hf[0].split(".")[::-1]
        target = out
        for part in reversed(path):
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        if isinstance(value, dict) and isinstance(target.get(node), dict):
            target[node] = {**value, **target[node]}
        elif node not in target:
            target[node] = value
    return out


def _member_params(net) -> dict[str, torch.Tensor]:
    """Params by the spec's names: a fused projection (q/k/v as one matrix) is cut back into its members."""
    layout = member_layout(net)
    fused = {f for f, _, _ in layout.values()}
    params = {n: p for n, p in net.named_parameters() if n not in fused}
    offsets: dict[str, int] = {}
    for member, (fused_name, _, shape) in sorted(layout.items(), key=lambda kv: (kv[1][0], kv[1][1])):
        start = offsets.get(fused_name, 0)
        params[member] = net.get_parameter(fused_name)[start:start + shape[0]]
        offsets[fused_name] = start + shape[0]
    return params


def checkpoint_tensors(model) -> dict[str, torch.Tensor]:
    """The model's params under checkpoint names, in the checkpoint's layout."""
    interface, config = model.interface, model.config
    params = _member_params(model.net)
    out: dict[str, torch.Tensor] = {}
    written: set = set()
    for rule in interface.weights:
        if not _active(rule, config):
            continue
        blocked = [transform_name(t)[0] for t in rule.transforms if transform_name(t)[0] in NEEDS_SOURCE_SHAPES]
        rx = template_regex(rule.targets[0])
        st = stacking(rule)
        done: set = set()
        for name in params:
            m = rx.match(name)
            if not m:
                continue
            if blocked:
                raise CheckpointError(f"weight rule {rule.sources} <- {rule.targets}: its {blocked[0]} transform "
                                      "cannot be undone without the checkpoint's source shapes")
            binding = m.groupdict()
            values = [{}]
            if st is not None and st[0] == "unstack":
                # the params of every value of the placeholder go back into one tensor, once
                base = {k: v for k, v in binding.items() if k != st[1]}
                if tuple(sorted(base.items())) in done:
                    continue
                done.add(tuple(sorted(base.items())))
                n = 0
                while fill(rule.targets[0], {**base, st[1]: str(n)}) in params:
                    n += 1
                binding, values = base, [{st[1]: str(p)} for p in range(n)]
            names = [fill(t, {**binding, **v}) for v in values for t in rule.targets]
            if written.intersection(names):
                continue
            written.update(names)
            tensors = [params[n].detach() for n in names]
            back = invert_transforms(rule, tensors, config, [None] * len(rule.sources))
            if st is not None and st[0] == "stack":
                values = [{st[1]: str(p)} for p in range(len(back) // len(rule.sources))]
            sources = [fill(s, {**binding, **v}) for v in values for s in rule.sources]
            for s, t in zip(sources, back):
                out[s] = t.contiguous()
    return out


def save_pretrained(model, folder: str | Path) -> Path:
    """Write model.safetensors and config.json that `runtime.load` (and Transformers) can read."""
    if model.load_report.get("tensor_parallel", {}).get("ranks", 1) > 1:
        raise CheckpointError("this model is split across ranks (tp_plan): it holds only this rank's share of "
                              "its weights; save from a process that loaded it whole")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = checkpoint_tensors(model)
    # safetensors refuses shared storage; tied params are written once, like save_pretrained does.
    seen, unique = set(), {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            unique[name] = t.clone() if t.untyped_storage().nbytes() != t.numel() * t.element_size() else t
    save_file(unique, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config(model.interface, model.config)
    config["dtype"] = str(model.dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
