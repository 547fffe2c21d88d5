"""Loading a checkpoint through the spec's weight rules.

First a plan from the safetensors headers alone: which checkpoint tensors feed which params, with
the shapes the transforms will produce. Missing, unexpected and mis-shaped tensors are reported
together before a single weight is read. Then each param is read (zero-copy from the mapped file
where no transform or cast is needed) and assigned in place of the meta-device placeholder.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from compiler.expr import Expr, ExprError
from compiler.weight_rules import fill, run_shapes, run_transforms, template_regex
from runtime.errors import CheckpointError
from runtime.fused_params import assemble, member_layout, virtual_params

SHOW = 12   # names listed per category before "... and N more"


@dataclass
class Assignment:
    rule: object
    sources: list[str]
    targets: list[str]


@dataclass
class LoadPlan:
    assignments: list[Assignment] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)       # tensor -> why it is not loaded
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mis_shaped: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        for title, names in (("missing (the model needs them, the checkpoint lacks them)", self.missing),
                             ("unexpected (in the checkpoint, mapped to no param)", self.unexpected),
                             ("mis-shaped", self.mis_shaped)):
            if names:
                shown = "\n    ".join(names[:SHOW])
                more = f"\n    ... and {len(names) - SHOW} more" if len(names) > SHOW else ""
                out.append(f"  {len(names)} {title}:\n    {shown}{more}")
        return out


def _active(rule, config: dict) -> bool:
    if rule.when is None:
        return True
    try:
        return bool(rule.when.evaluate(config))
    except ExprError as err:
        raise CheckpointError(f"weight rule 'when: {rule.when}' cannot be evaluated: {err}") from None


def tied_params(module: nn.Module) -> dict[str, str]:
    """Param names that share storage with an earlier one: alias -> owner."""
    owners, aliases = {}, {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in owners:
            aliases[name] = owners[id(p)]
        else:
            owners[id(p)] = name
    return aliases


def plan_load(spec, config: dict, module: nn.Module, tensors: dict, folder: str = "") -> LoadPlan:
    """Match checkpoint tensors (name -> TensorInfo) to the module's params through the rules."""
    params = virtual_params(module)
    aliases = tied_params(module)
    plan = LoadPlan()
    consumed: set[str] = set()
    produced: dict[str, str] = {}
    rules = [r for r in spec.weights if _active(r, config)]
    inactive = [r for r in spec.weights if not _active(r, config)]
    for name in sorted(tensors):
        if name in consumed:
            continue
        rule, binding = _match(rules, name)
        if rule is None:
            if _match(inactive, name)[0] is not None:
                plan.unexpected.append(f"{name} (its rule applies only when {_match(inactive, name)[0].when})")
            else:
                plan.unexpected.append(name)
            continue
        sources = [fill(s, binding) for s in rule.sources]
        targets = [fill(t, binding) for t in rule.targets]
        absent = [s for s in sources if s not in tensors]
        if absent:
            plan.missing.extend(f"{s} (needed with {name} for {', '.join(targets)})" for s in absent)
            consumed.update(s for s in sources if s in tensors)
            continue
        consumed.update(sources)
        if all(t in aliases for t in targets):
            for s in sources:
                plan.ignored[s] = f"{', '.join(targets)} is tied to {', '.join(aliases[t] for t in targets)}"
            continue
        unknown = [t for t in targets if t not in params and t not in aliases]
        if unknown:
            plan.unexpected.extend(f"{s} (maps to {', '.join(unknown)}, which this config does not have)" for s in sources)
            continue
        try:
            shapes = run_shapes(rule, [tuple(tensors[s].shape) for s in sources], config)
        except (ValueError, ExprError) as err:
            plan.mis_shaped.append(f"{', '.join(sources)}: {err}")
            continue
        bad = False
        for target, shape in zip(targets, shapes):
            want = params.get(target) or params.get(aliases.get(target, ""))
            if tuple(shape) != tuple(want):
                src = ", ".join(f"{s} {list(tensors[s].shape)}" for s in sources)
                plan.mis_shaped.append(f"{target}: the model wants {list(want)}, the checkpoint gives {list(shape)} (from {src})")
                bad = True
        if not bad:
            plan.assignments.append(Assignment(rule, sources, targets))
            for t in targets:
                produced[t] = name
    for name in params:
        if name not in produced:
            plan.missing.append(name)
    return plan


def _match(rules, name: str):
    for rule in rules:
        m = _regex(rule.sources[0]).match(name)
        if m:
            return rule, m.groupdict()
    return None, None


_REGEX_CACHE: dict[str, object] = {}


def _regex(template: str):
    rx = _REGEX_CACHE.get(template)
    if rx is None:
        rx = _REGEX_CACHE[template] = template_regex(template)
    return rx


def load_into(module: nn.Module, plan: LoadPlan, checkpoint, config: dict, dtype: torch.dtype, device) -> None:
    """Replace every meta param of `module` by the checkpoint's tensor, cast to `dtype`."""
    members, pending = member_layout(module), {}
    for a in plan.assignments:
        tensors = [checkpoint.get(s) for s in a.sources]
        if a.rule.transforms:
            tensors = run_transforms(a.rule, tensors, config)
        for target, tensor in zip(a.targets, tensors):
            tensor = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
            if target in members:
                pending[target] = tensor
                continue
            _set_param(module, target, nn.Parameter(tensor.contiguous(), requires_grad=False))
    assemble(module, pending, _set_param)
    for m in module.modules():
        if hasattr(m, "tie_weights"):
            m.tie_weights()


def _set_param(module: nn.Module, dotted: str, value: nn.Parameter) -> None:
    owner_path, _, leaf = dotted.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    setattr(owner, leaf, value)


def check_no_meta(module: nn.Module) -> None:
    left = [n for n, p in module.named_parameters() if p.is_meta]
    if left:
        raise CheckpointError(f"params left without weights (a bug in the weight plan): {', '.join(left[:SHOW])}")


__all__ = ["plan_load", "load_into", "LoadPlan", "Expr"]
