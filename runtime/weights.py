"""Loading a checkpoint through the weight rules of an artifact's interface (the spec's `weights:`).

First a plan from the safetensors headers alone: which checkpoint tensors feed which params, with
the shapes the transforms will produce. Missing, unexpected and mis-shaped tensors are reported
together before a single weight is read. Then each param is read (zero-copy from the mapped file
where no transform or cast is needed) and assigned in place of the meta-device placeholder.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from runtime.errors import CheckpointError, WeightWarning
from runtime.expr import Expr, ExprError
from runtime.fused_params import assemble, member_layout, virtual_params
from runtime.rules import fill, run_shapes, run_transforms, stacking, template_regex
from runtime.safetensors_io import DTYPES

SHOW = 12   # names listed per category before "... and N more"


@dataclass
class Assignment:
    rule: object
    sources: list[str]
    targets: list[str]
    untie: bool = False          # the targets are tied aliases that the checkpoint gives their own weights


@dataclass
class LoadPlan:
    assignments: list[Assignment] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)       # tensor -> why it is not loaded
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mis_shaped: list[str] = field(default_factory=list)
    mis_typed: list[str] = field(default_factory=list)        # integer or bool tensors for float params
    head_missing: list[str] = field(default_factory=list)     # params of the chosen head without weights
    untied: list[str] = field(default_factory=list)           # tied params loaded with their own tensor

    def problems(self) -> list[str]:
        out = []
        for title, names in (("missing (the model needs them, the checkpoint lacks them)", self.missing),
                             ("unexpected (in the checkpoint, mapped to no param)", self.unexpected),
                             ("mis-shaped", self.mis_shaped),
                             ("of the wrong dtype (float params, integer or bool tensors)", self.mis_typed)):
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


def _strip_prefix(interface, tensors: dict, plan: "LoadPlan") -> tuple[dict, dict]:
    """Checkpoints saved with a head carry the trunk under the spec's base_prefix (`model_type.`), those saved
    without do not; rules are written without it. Returns (rule-side name -> info, rule-side -> file name)."""
    prefix = interface.base_prefix
    if not prefix:
        return tensors, {n: n for n in tensors}
    local, original = {}, {}
    for name, info in tensors.items():
        short = name[len(prefix):] if name.startswith(prefix) else name
        if short in original:
            plan.unexpected.append(f"{name} (the same tensor as {original[short]} once the prefix '{prefix}' is removed)")
            continue
        local[short], original[short] = info, name
    return local, original


def _head_owners(interface) -> dict[str, list[str]]:
    """Top-level param -> the heads that declare it (none: a trunk param)."""
    owners: dict[str, list[str]] = {}
    for head in interface.heads:
        for root in sorted(interface.head_params(head)):
            owners.setdefault(root, []).append(head)
    return owners


def plan_load(interface, config: dict, module: nn.Module, tensors: dict, folder: str = "",
              head: str | None = None, shard=None) -> LoadPlan:
    """Match checkpoint tensors (name -> TensorInfo) to the module's params through the rules.

    With a head chosen, its params without weights go to `head_missing` (the caller decides whether
    they may be newly initialised), and tensors of the spec's other heads are ignored, with the reason.
    `shard` (tensor parallelism, runtime/parallel): the shapes this rank holds of split tensors.
    """
    params = virtual_params(module)
    exact = {n for n, p in module.named_parameters() if not p.is_floating_point()}   # e.g. quantized weights
    aliases = tied_params(module)
    plan = LoadPlan()
    tensors, original = _strip_prefix(interface, tensors, plan)
    owners = _head_owners(interface)

    def heads_of(target: str) -> list[str]:
        return owners.get(target.split(".", 1)[0], [])

    consumed: set[str] = set()
    produced: dict[str, str] = {}
    dropped: dict[str, str] = {}          # tensors `ignore:` rules set aside -> why
    rules = [r for r in interface.weights if _active(r, config)]
    inactive = [r for r in interface.weights if not _active(r, config)]
    matches = {name: _match(rules, name) for name in tensors}
    stacks = _stack_groups(matches)
    for name in sorted(tensors):
        if name in consumed:
            continue
        rule, binding = matches[name]
        if rule is None:
            if _match(inactive, name)[0] is not None:
                plan.unexpected.append(f"{name} (its rule applies only when {_match(inactive, name)[0].when})")
            else:
                plan.unexpected.append(name)
            continue
        expanded = _expand(rule, binding, stacks, tensors, config, plan)
        if expanded is None:
            consumed.add(name)
            continue
        sources, targets = expanded
        if rule.ignore is not None:
            plan.ignored[original[name]] = rule.ignore
            dropped[name] = rule.ignore
            consumed.add(name)
            continue
        absent = [s for s in sources if s not in tensors]
        if absent:
            plan.missing.extend(f"{s} (needed with {name} for {', '.join(targets)})" for s in absent)
            consumed.update(s for s in sources if s in tensors)
            continue
        consumed.update(sources)
        # A checkpoint that carries its own tensor for a tied param (an untied LM head under a config that
        # says tied, as Transformers 5 writes some) gets it: the tie is undone for that param,
        # as Transformers does. Equal values (old checkpoints saving both) give the same numbers.
        untie = all(t in aliases for t in targets)
        unknown = [t for t in targets if t not in params and t not in aliases]
        claimed = [heads_of(t) for t in unknown]
        if unknown and all(claimed):
            # the module lacks these params, so they are not the chosen head's: another head's weights
            heads = sorted({h for hs in claimed for h in hs})
            for s in sources:
                plan.ignored[original[s]] = f"weights of the {', '.join(heads)} head, not the one loaded"
            continue
        if unknown:
            plan.unexpected.extend(f"{s} (maps to {', '.join(unknown)}, which this config does not have)" for s in sources)
            continue
        try:
            shapes = run_shapes(rule, [tuple(tensors[s].shape) for s in sources], config)
            if shard is not None:
                shapes = shard.shapes(targets, shapes)
        except (ValueError, ExprError) as err:
            plan.mis_shaped.append(f"{', '.join(sources)}: {err}")
            produced.update((t, name) for t in targets)
            continue
        bad = False
        for target, shape in zip(targets, shapes):
            want = params.get(target) or params.get(aliases.get(target, ""))
            if tuple(shape) != tuple(want):
                src = ", ".join(f"{s} {list(tensors[s].shape)}" for s in sources[:SHOW])
                src += f", ... ({len(sources)} tensors)" if len(sources) > SHOW else ""
                plan.mis_shaped.append(f"{target}: the model wants {list(want)}, the checkpoint gives {list(shape)} (from {src})")
                produced[target] = name   # present, only mis-shaped: not also "missing"
                bad = True
        floats = [t for t in targets if t not in exact and aliases.get(t, t) not in exact]
        for s in sources if floats else ():
            if not DTYPES[tensors[s].dtype].is_floating_point:
                plan.mis_typed.append(f"{original[s]} in {tensors[s].file.name}: {tensors[s].dtype}, but "
                                      f"{', '.join(floats)} {'is a float param' if len(floats) == 1 else 'are float params'}")
                bad = True
        if not bad:
            plan.assignments.append(Assignment(rule, [original[s] for s in sources], targets, untie))
            if untie:
                plan.untied.extend(targets)
            for t in targets:
                produced[t] = name
    unfed = [name for name in params if name not in produced]
    hidden = _hidden_by_ignore(dropped, unfed, tensors, params, original, folder)
    for name in unfed:
        if head is not None and head in heads_of(name):
            plan.head_missing.append(name)      # param names: the caller may initialise them
        else:
            plan.missing.append(f"{name} ({hidden[name]})" if name in hidden else name)
    return plan


def _hidden_by_ignore(dropped: dict, unfed: list[str], tensors: dict, params: dict, original: dict,
                      folder: str) -> dict[str, str]:
    """A tensor an `ignore:` rule drops that has the shape of a param no rule feeds may be that
    param's weights: a WeightWarning names both. Returns param -> a note for its missing entry."""
    notes: dict[str, str] = {}
    for tensor, why in sorted(dropped.items()):
        shape = tuple(tensors[tensor].shape)
        fits = [p for p in unfed if tuple(params[p]) == shape]
        if not fits:
            continue
        where = f"{folder}: " if folder else ""
        warnings.warn(f"{where}the ignore rule for {original[tensor]} ('{why}') drops a tensor of shape {list(shape)}, "
                      f"the shape of param {', '.join(fits[:3])}, which no weight rule feeds", WeightWarning,
                      stacklevel=3)
        for p in fits:
            notes.setdefault(p, f"an ignore rule dropped {original[tensor]}, of this shape")
    return notes


def _stack_groups(matches: dict) -> dict:
    """For each stacking rule and binding of its other placeholders, the tensor of each value of
    the stacked one (`experts.{e}.w1.weight`: e -> name), so a group is gathered once."""
    groups: dict = {}
    for name, (rule, binding) in matches.items():
        st = stacking(rule) if rule is not None else None
        if st is not None and st[0] == "stack":
            key = (id(rule), tuple(sorted((k, v) for k, v in binding.items() if k != st[1])))
            groups.setdefault(key, {})[binding[st[1]]] = name
    return groups


def _expand(rule, binding: dict, stacks: dict, tensors: dict, config: dict, plan: "LoadPlan"):
    """(sources, targets) of the rule for a matched tensor: one of each per placeholder binding, or
    for a stacking rule every value of the stacked placeholder, value-major. None: nothing to load
    (reported in `plan`)."""
    st = stacking(rule)
    if st is None:
        return [fill(s, binding) for s in rule.sources], [fill(t, binding) for t in rule.targets]
    kind, var, _ = st
    if kind == "stack":
        base = {k: v for k, v in binding.items() if k != var}
        found = stacks[(id(rule), tuple(sorted(base.items())))]
        odd = sorted(v for v in found if not v.isdigit())
        if odd:
            plan.unexpected.extend(f"{found[v]} (stacked over {{{var}}}, whose values must be 0, 1, 2, ...)" for v in odd)
            return None
        n = max(int(v) for v in found) + 1
        sources = [fill(s, {**base, var: str(p)}) for p in range(n) for s in rule.sources]
        return sources, [fill(t, base) for t in rule.targets]
    sources = [fill(s, binding) for s in rule.sources]
    if any(s not in tensors for s in sources):
        return sources, []          # reported as missing by the caller
    try:
        n = len(run_shapes(rule, [tuple(tensors[s].shape) for s in sources], config)) // len(rule.targets)
    except (ValueError, ExprError) as err:
        plan.mis_shaped.append(f"{', '.join(sources)}: {err}")
        return None
    return sources, [fill(t, {**binding, var: str(p)}) for p in range(n) for t in rule.targets]


def _match(rules, name: str):
    """The first rule with a source template matching `name` (any of a concat's sources), and the binding."""
    for rule in rules:
        for template in rule.sources:
            m = _regex(template).match(name)
            if m:
                return rule, m.groupdict()
    return None, None


_REGEX_CACHE: dict[str, object] = {}


def _regex(template: str):
    rx = _REGEX_CACHE.get(template)
    if rx is None:
        rx = _REGEX_CACHE[template] = template_regex(template)
    return rx


def load_into(module: nn.Module, plan: LoadPlan, checkpoint, config: dict, dtype: torch.dtype, device,
              shard=None) -> None:
    """Replace every meta param of `module` by the checkpoint's tensor, cast to `dtype`; with `shard`
    (tensor parallelism, runtime/parallel), by the slices this rank holds, read alone."""
    members = member_layout(module)
    parts: dict[str, set[str]] = {}
    for member, (fused, _, _) in members.items():
        parts.setdefault(fused, set()).add(member)
    pending: dict[str, torch.Tensor] = {}
    sources_of: dict[str, list[str]] = {}

    def assemble_ready() -> None:
        # Each fused param is concatenated as soon as its members are in, so member copies never
        # pile up for the whole model before one concatenation at the end.
        for fused, names in parts.items():
            if names and names <= pending.keys():
                assemble(module, {m: pending.pop(m) for m in names}, _set_param)
                for m in names:
                    for s in sources_of.pop(m, []):
                        checkpoint.release(s)
                parts[fused] = set()

    def assign(a):
        tensors = shard.read(a, checkpoint) if shard is not None else None
        sliced = tensors is not None
        if not sliced:
            tensors = [checkpoint.get(s) for s in a.sources]
            if a.rule.transforms:
                tensors = run_transforms(a.rule, tensors, config)
        copied = bool(a.rule.transforms)
        for target, tensor in zip(a.targets, tensors):
            want = dtype if tensor.is_floating_point() else tensor.dtype
            if not sliced and not a.rule.transforms and len(a.sources) == 1 and _worth_chunking(tensor, want, device):
                cast = _cast_in_chunks(tensor, want, lambda lo, hi: checkpoint.release(a.sources[0], lo, hi))
            else:
                cast = tensor.to(device=device, dtype=want)
            copied = copied or cast.data_ptr() != tensor.data_ptr()
            if target in members:
                pending[target] = cast
                sources_of[target] = list(a.sources)
                continue
            _set_param(module, target, nn.Parameter(cast.contiguous()))
        # The mapped pages of a source that now lives elsewhere are given back, so loading an fp32
        # checkpoint as bf16 does not hold both; fused members go when their concatenation is made.
        if copied and not any(t in members for t in a.targets):
            for s in a.sources:
                checkpoint.release(s)
        assemble_ready()

    for a in plan.assignments:
        if not a.untie:
            assign(a)
    for m in module.modules():
        if hasattr(m, "tie_weights"):
            m.tie_weights()
    for a in plan.assignments:     # after the ties, which would point them back at their owners
        if a.untie:
            assign(a)


CHUNK_BYTES = 16 << 20


def _worth_chunking(tensor: torch.Tensor, dtype: torch.dtype, device) -> bool:
    return (tensor.dtype != dtype and torch.device(device).type == "cpu" and tensor.dim() > 0
            and tensor.is_contiguous() and tensor.numel() * tensor.element_size() > CHUNK_BYTES)


def _cast_in_chunks(tensor: torch.Tensor, dtype: torch.dtype, release) -> torch.Tensor:
    """A cast that gives back each chunk of the mapped source as soon as it is converted, so a large
    table (embeddings, the LM head) is never resident twice, in both dtypes, while loading."""
    out = torch.empty(tensor.shape, dtype=dtype)
    row_bytes = max(1, tensor[0].numel() * tensor.element_size())
    step = max(1, CHUNK_BYTES // row_bytes)
    for lo in range(0, tensor.shape[0], step):
        hi = min(tensor.shape[0], lo + step)
        out[lo:hi].copy_(tensor[lo:hi])
        release(lo * row_bytes, hi * row_bytes)
    return out


def _set_param(module: nn.Module, dotted: str, value: nn.Parameter) -> None:
    owner_path, _, leaf = dotted.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    setattr(owner, leaf, value)


def check_no_meta(module: nn.Module) -> None:
    left = [n for n, p in module.named_parameters() if p.is_meta]
    if left:
        raise CheckpointError(f"params left without weights (a bug in the weight plan): {', '.join(left[:SHOW])}")


__all__ = ["plan_load", "load_into", "LoadPlan", "Expr"]
