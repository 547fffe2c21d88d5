"""Weight-rule mechanics: name templates and layout transforms, shared by loading and saving.

A rule is a pair of name templates with placeholders (`model.layers.{i}.self_attn.{proj}.weight` ->
`layers.{i}.attn.{proj}.weight`); a placeholder matches one dotted segment. Transforms run in
order on the list of source tensors. Each transform has a shape function (so a checkpoint is
checked from its headers before any weight is read) and an inverse (so saving can undo loading).
Pure Python: the compiler checks rules with the shape functions and never imports torch; the
tensor functions import it when they run (at load or save time, never per forward).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from runtime.expr import Expr


def _torch():
    import torch
    return torch


PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
LAYER_VARS = ("i", "j", "k")


class TemplateMatch:
    """The binding of a template's placeholders to the segments of one name."""

    def __init__(self, binding: dict[str, str]):
        self._binding = binding

    def groupdict(self) -> dict[str, str]:
        return dict(self._binding)


class Template:
    """A compiled name template. Matching runs in time linear in the name's length per placeholder.

    A regular expression with one `[^.]+` group per placeholder backtracks exponentially on
    placeholders that only literal text of the same segment separates (`{a}{b}{c}...`). But a
    placeholder never matches a dot, so the name's dots line up one to one with the template's and
    each dotted segment matches on its own; inside a segment the literal pieces are placed from the
    right, each at its rightmost possible place. That gives every placeholder the longest text that
    still lets the rest match, i.e. exactly the binding the regular expression's greedy groups find.
    """

    def __init__(self, template: str):
        self.template = template
        self._segments: list[list[str]] = []     # per segment: literal, name, literal, ..., literal
        seen: set[str] = set()
        for segment in template.split("."):
            parts, pos = [], 0
            for m in PLACEHOLDER.finditer(segment):
                name = m.group(1)
                if name in seen:
                    raise ValueError(f"placeholder {{{name}}} appears twice in '{template}'; "
                                     "each placeholder names one segment of the name")
                if parts and m.start() == pos:
                    raise ValueError(f"placeholders {{{parts[-1]}}}{{{name}}} in '{template}' are adjacent: "
                                     "where one ends and the next begins is ambiguous")
                seen.add(name)
                parts += [segment[pos:m.start()], name]
                pos = m.end()
            parts.append(segment[pos:])
            self._segments.append(parts)

    def match(self, name: str) -> TemplateMatch | None:
        pieces = name.split(".")
        if len(pieces) != len(self._segments):
            return None
        binding: dict[str, str] = {}
        for parts, piece in zip(self._segments, pieces):
            if not _match_segment(parts, piece, binding):
                return None
        return TemplateMatch(binding)


def _match_segment(parts: list[str], piece: str, binding: dict[str, str]) -> bool:
    """Literal pieces at their rightmost places, each placeholder between them non-empty."""
    literals, names = parts[0::2], parts[1::2]
    head, tail = literals[0], literals[-1]
    if not names:
        return piece == head
    if len(piece) < len(head) + len(tail) or not piece.startswith(head) or not piece.endswith(tail):
        return False
    end = len(piece) - len(tail)            # where the text of the last placeholder ends
    for i in range(len(names) - 1, 0, -1):
        lo, hi = len(head) + 1, end - 1       # the placeholders on both sides keep a character each
        start = piece.rfind(literals[i], lo, hi) if hi > lo else -1   # literals[i] is never empty
        if start < 0:
            return False
        binding[names[i]] = piece[start + len(literals[i]):end]
        end = start
    if end <= len(head):
        return False
    binding[names[0]] = piece[len(head):end]
    return True


def template_regex(template: str) -> Template:
    """The compiled template (the name is kept for the callers that compiled a regex before)."""
    return Template(template)


def placeholders(template: str) -> set[str]:
    return set(PLACEHOLDER.findall(template))


def fill(template: str, binding: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: binding[m.group(1)], template)


# -- transforms ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transform:
    name: str
    shapes: Callable      # (list of shapes, arg, config) -> list of shapes
    apply: Callable       # (list of tensors, arg, config) -> list of tensors
    inverse: Callable     # (list of tensors, arg, config, original shapes) -> list of tensors
    arity: Callable       # (n_in, arg) -> n_out, or raises ValueError


def _eval(e, config):
    return e.evaluate(config) if isinstance(e, Expr) else e


def _split_sizes(shape, arg, config, n_out):
    dim = arg["dim"]
    if "sizes" in arg:
        return [int(_eval(s, config)) for s in arg["sizes"]]
    total = shape[dim]
    if total % n_out:
        raise ValueError(f"cannot split dim {dim} of size {total} into {n_out} equal parts")
    return [total // n_out] * n_out


def _one(n_in, what):
    if n_in != 1:
        raise ValueError(f"'{what}' works on one tensor at a time, it got {n_in}")


TRANSFORMS = {t.name: t for t in (
    Transform(
        "transpose",
        shapes=lambda shapes, arg, cfg: [tuple(reversed(s)) if len(s) == 2 else s for s in shapes],
        apply=lambda ts, arg, cfg: [t.t() if t.dim() == 2 else t for t in ts],
        inverse=lambda ts, arg, cfg, orig: [t.t() if t.dim() == 2 else t for t in ts],
        arity=lambda n, arg: n),
    Transform(
        "split",
        shapes=lambda shapes, arg, cfg, n_out=None: _split_shapes(shapes, arg, cfg, n_out),
        apply=lambda ts, arg, cfg, n_out=None: list(_torch().split(ts[0], _split_sizes(ts[0].shape, arg, cfg, n_out), dim=arg["dim"])),
        inverse=lambda ts, arg, cfg, orig: [_torch().cat(ts, dim=arg["dim"])],
        arity=lambda n, arg: (_one(n, "split"), len(arg.get("sizes", [])) or None)[1]),
    Transform(
        "concat",
        shapes=lambda shapes, arg, cfg: [_concat_shape(shapes, arg["dim"])],
        apply=lambda ts, arg, cfg: [_torch().cat(ts, dim=arg["dim"])],
        inverse=lambda ts, arg, cfg, orig: list(_torch().split(ts[0], [s[arg["dim"]] for s in orig], dim=arg["dim"])),
        arity=lambda n, arg: 1),
    Transform(
        "reshape",
        shapes=lambda shapes, arg, cfg: [_reshape_shape(s, [int(_eval(d, cfg)) for d in arg]) for s in shapes],
        apply=lambda ts, arg, cfg: [t.reshape([int(_eval(d, cfg)) for d in arg]) for t in ts],
        inverse=lambda ts, arg, cfg, orig: [t.reshape(s) for t, s in zip(ts, orig)],
        arity=lambda n, arg: n),
    Transform(
        "permute",
        shapes=lambda shapes, arg, cfg: [tuple(s[i] for i in arg) for s in shapes],
        apply=lambda ts, arg, cfg: [t.permute(*arg) for t in ts],
        inverse=lambda ts, arg, cfg, orig: [t.permute(*[arg.index(i) for i in range(len(arg))]) for t in ts],
        arity=lambda n, arg: n),
)}


def _split_shapes(shapes, arg, cfg, n_out):
    sizes = _split_sizes(shapes[0], arg, cfg, n_out)
    if sum(sizes) != shapes[0][arg["dim"]]:
        raise ValueError(f"split sizes {sizes} do not add up to dim {arg['dim']} of {list(shapes[0])}")
    return [tuple(sz if i == arg["dim"] else d for i, d in enumerate(shapes[0])) for sz in sizes]


def _concat_shape(shapes, dim):
    first = shapes[0]
    for s in shapes[1:]:
        if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != dim % len(first)):
            raise ValueError(f"cannot concatenate shapes {[list(x) for x in shapes]} on dim {dim}")
    return tuple(sum(s[dim] for s in shapes) if i == dim % len(first) else d for i, d in enumerate(first))


def _reshape_shape(shape, new):
    n_old = 1
    for d in shape:
        n_old *= d
    n_new = 1
    for d in new:
        n_new *= d
    if n_old != n_new:
        raise ValueError(f"cannot reshape {list(shape)} ({n_old} elements) to {new} ({n_new} elements)")
    return tuple(new)


def transform_name(t) -> tuple[str, object]:
    if isinstance(t, str):
        return t, None
    (name, arg), = t.items()
    return name, arg


# Stacking over a placeholder: `{stack: {over: e, dim: 0}}` gathers the tensors of every value of
# `e` (0, 1, ..., n-1: per-expert or per-head tensors) into one tensor with a new dim of size n;
# `{unstack: {over: e, dim: 0}}` cuts one tensor along a dim into the tensors of e = 0, ..., n-1.
# The placeholder is in the sources of a stacking rule and in the targets of an unstacking one.
# Transforms before a stack run on each value's tensors, those after it on the stacked ones (and the
# reverse for an unstack). Lists of tensors per value are flattened value-major: [a@0, b@0, a@1, ...].
STACKING = ("stack", "unstack")


def stacking(rule) -> tuple[str, str, int] | None:
    """(stack | unstack, placeholder, dim) of the rule's stacking transform, or None."""
    for t in rule.transforms:
        name, arg = transform_name(t)
        if name in STACKING:
            return name, arg["over"], arg.get("dim", 0)
    return None


def _groups(items: list, width: int) -> list[list]:
    return [items[i:i + width] for i in range(0, len(items), width)]


def _stack(groups: list[list], dim: int, what: str) -> list:
    if what == "apply":
        return [_torch().stack([g[j] for g in groups], dim=dim) for j in range(len(groups[0]))]
    out = []
    for j in range(len(groups[0])):
        shapes = {tuple(g[j]) for g in groups}
        if len(shapes) != 1:
            raise ValueError(f"cannot stack tensors of shapes {sorted(list(s) for s in shapes)}")
        shape = list(groups[0][j])
        out.append(tuple(shape[:dim % (len(shape) + 1)] + [len(groups)] + shape[dim % (len(shape) + 1):]))
    return out


def _unstack(items: list, dim: int, what: str) -> list[list]:
    sizes = {(t.shape if what == "apply" else t)[dim] for t in items}
    if len(sizes) != 1:
        raise ValueError(f"cannot unstack tensors with {sorted(sizes)} entries along dim {dim} together")
    n = sizes.pop()
    if what == "apply":
        return [[t.select(dim, p) for t in items] for p in range(n)]
    return [[tuple(d for i, d in enumerate(t) if i != dim % len(t)) for t in items] for _ in range(n)]


def _forward(rule, items: list, config: dict, what: str) -> list:
    """Run the rule's transforms over tensors or shapes (`what` is "apply" or "shapes"). A stacking
    rule takes its sources value-major; an unstacking one returns its targets value-major."""
    stack = stacking(rule)
    groups = _groups(items, len(rule.sources)) if stack and stack[0] == "stack" else [items]
    for t in rule.transforms:
        name, arg = transform_name(t)
        if name == "stack":
            groups = [_stack(groups, arg.get("dim", 0), what)]
            continue
        if name == "unstack":
            groups = _unstack(groups[0], arg.get("dim", 0), what)
            continue
        step = getattr(TRANSFORMS[name], what)
        # Only split needs to know how many pieces to make when no sizes are given.
        groups = [step(g, arg, config, len(rule.targets)) if name == "split" else step(g, arg, config) for g in groups]
    return [x for g in groups for x in g]


def run_shapes(rule, shapes: list[tuple], config: dict) -> list[tuple]:
    """The target shapes a rule produces from source shapes; ValueError if the layout cannot fit."""
    shapes = _forward(rule, shapes, config, "shapes")
    if len(shapes) % max(len(rule.targets), 1) or (not stacking(rule) and len(shapes) != len(rule.targets)):
        raise ValueError(f"the rule's transforms give {len(shapes)} tensor(s) for {len(rule.targets)} target(s)")
    return shapes


def run_transforms(rule, tensors: list, config: dict) -> list:
    return _forward(rule, tensors, config, "apply")


def invert_transforms(rule, tensors: list, config: dict, source_shapes: list[tuple]) -> list:
    """Targets back to the checkpoint's layout (used by saving); `source_shapes` are the originals
    (value-major for a stacking rule; None where unknown: then only transforms that need no shapes
    can be undone). An unstacking rule takes its targets value-major, a stacking one returns its
    sources value-major."""
    stack = stacking(rule)
    per = stack is not None and stack[0] == "stack"
    stages = [_groups(list(source_shapes), len(rule.sources)) if per else [list(source_shapes)]]
    for t in rule.transforms:
        name, arg = transform_name(t)
        prev = stages[-1]
        if any(s is None for g in prev for s in g):
            n = len(prev) if name != "stack" else 1
            stages.append([[None] * len(prev[0])] * n if name != "unstack" else prev)
            continue
        if name == "stack":
            stages.append([_stack(prev, arg.get("dim", 0), "shapes")])
        elif name == "unstack":
            stages.append(_unstack(prev[0], arg.get("dim", 0), "shapes"))
        else:
            stages.append([_split_shapes(g, arg, config, len(rule.targets)) if name == "split"
                           else TRANSFORMS[name].shapes(g, arg, config) for g in prev])
    groups = _groups(tensors, len(rule.targets)) if stack is not None and stack[0] == "unstack" else [tensors]
    for t, orig in zip(reversed(rule.transforms), reversed(stages[:-1])):
        name, arg = transform_name(t)
        if name == "stack":        # undone: the stacked tensors cut into each value's
            groups = [[x.select(arg.get("dim", 0), p) for x in groups[0]] for p in range(groups[0][0].shape[arg.get("dim", 0)])]
        elif name == "unstack":    # undone: each value's tensors stacked again
            groups = [[_torch().stack([g[j] for g in groups], dim=arg.get("dim", 0)) for j in range(len(groups[0]))]]
        else:
            groups = [TRANSFORMS[name].inverse(g, arg, config, o) for g, o in
                      zip(groups, orig if len(orig) == len(groups) else [orig[0]] * len(groups))]
    return [x for g in groups for x in g]
