"""Weight rules at compile time: the model's tensors as templates, and the static rule checks.

The mechanics (templates, transforms with shape functions and inverses) are runtime/rules.py, shared
with loading and saving.
"""
from __future__ import annotations

from dataclasses import dataclass

from compiler.errors import Problem
from compiler.ops.params import PARAM_KINDS
from compiler.printer import LAYER_INDEX
from runtime.expr import Expr, parse_expr
from runtime.rules import (
    LAYER_VARS,
    STACKING,
    TRANSFORMS,
    Template,
    placeholders,
    transform_name,
)


def param_tensors(p) -> list[tuple[str, tuple, object]]:
    """The tensors a param declaration owns: (tensor name, shape Exprs, condition Expr or True)."""
    kind = PARAM_KINDS[p.kind]
    return kind.tensors({**p.dims, **p.options})


def shared_tensors(p, target) -> tuple[list[str], list[str]]:
    """A tie shares every tensor both params have (an LM head's weight and, where the embedding has
    one, its bias); tensors only `p` has stay its own. Returns (shared, those whose shapes differ)."""
    from compiler.symbolic import same_value
    mine = {n: s for n, s, c in param_tensors(p) if not _never(c)}
    theirs = {n: s for n, s, c in param_tensors(target) if not _never(c)}
    shared = [n for n in mine if n in theirs]
    differ = [n for n in shared if len(mine[n]) != len(theirs[n])
              or not all(same_value(a, b) for a, b in zip(mine[n], theirs[n]))]
    return [n for n in shared if n not in differ], differ


def _never(cond) -> bool:
    return isinstance(cond, Expr) and cond.is_constant() and not cond.evaluate({})


@dataclass(frozen=True)
class TensorTemplate:
    name: str                    # "layers.{i}.attn.q_proj.weight"
    shape: tuple                 # Exprs over config names
    when: tuple                  # conditions (Exprs) that must all hold for it to exist
    tied_to: str | None = None   # the tensor it shares storage with, when `tied_when` holds
    tied_when: object = None
    repeat: tuple = ()           # (placeholder, count Expr) for each enclosing repeat
    head: str | None = None      # the task head that owns it (built only with that head)
    block: str | None = None     # the block declaring its param, and that param
    param: str | None = None


def model_tensors(ir) -> list[TensorTemplate]:
    """Every tensor of the model (the spec's params: a fused param counts as its members), as
    templates with one placeholder per repeated block level."""
    out: list[TensorTemplate] = []

    def walk(block, prefix: str, when: tuple, repeat: tuple, head: str | None = None) -> None:
        # the layer index of conditions is the placeholder of the innermost repeat (`{i}`)
        layer = {LAYER_INDEX: parse_expr(repeat[-1][0])} if repeat else {}
        for p in block.params.values():
            if p.kind == "fused_linear":
                continue
            conds = when + tuple(c.substitute(layer) for c in p.when)
            if p.kind == "block":
                if p.repeat is not None:
                    var = LAYER_VARS[len(repeat)]
                    walk(ir.blocks[p.block], f"{prefix}{p.name}.{{{var}}}.", conds, repeat + ((var, p.repeat),), head)
                else:
                    walk(ir.blocks[p.block], f"{prefix}{p.name}.", conds, repeat, head)
                continue
            target = block.params.get(p.tied_to) or ir.model.params.get(p.tied_to) if p.tied_to else None
            shared = set(shared_tensors(p, target)[0]) if target is not None else set()
            for tensor, shape, cond in param_tensors(p):
                if isinstance(cond, Expr) and cond.is_constant():
                    if not cond.evaluate({}):
                        continue          # e.g. `bias: false`: the tensor does not exist
                    cond = True
                tconds = conds + ((cond,) if isinstance(cond, Expr) else ())
                # a tie shares every tensor both params have; the others stay the param's own (an MLM decoder's bias)
                tied = f"{prefix}{p.tied_to}.{tensor}" if p.tied_to and tensor in shared else None
                out.append(TensorTemplate(f"{prefix}{p.name}.{tensor}", tuple(shape), tconds, tied, p.tied_when,
                                          repeat, head, block.name, p.name))

    walk(ir.model, "", (), ())
    for name in ir.heads:
        walk(ir.head_block(name), "", (), (), name)
    return out


def _template_problems(ir, rule) -> list[Problem]:
    """A template that cannot be matched unambiguously, at its own line."""
    out = []
    for field, templates in (("from", rule.sources), ("to", rule.targets)):
        for j, template in enumerate(templates):
            try:
                Template(template)
            except ValueError as err:
                out.append(ir.problem(rule.path + (field,) + ((j,) if len(templates) > 1 else ()), str(err)))
    return out


def check_rules(ir) -> list[Problem]:
    """Static checks: every rule lands on params, every param is fed by a rule, placeholders agree."""
    problems = []
    tensors = model_tensors(ir)
    covered: set[str] = set()
    for rule in ir.weights:
        broken = _template_problems(ir, rule)
        problems += broken
        if rule.ignore is not None or broken:
            continue
        src_vars = [placeholders(s) for s in rule.sources]
        tgt_vars = [placeholders(t) for t in rule.targets]
        all_vars = set().union(*src_vars, *tgt_vars)
        # a stacked placeholder is on one side only: the sources of a stack, the targets of an unstack
        stacks = [transform_name(t) for t in rule.transforms if transform_name(t)[0] in STACKING]
        over = {kind: arg["over"] for kind, arg in stacks}
        if len(stacks) > 1:
            problems.append(ir.problem(rule.path + ("transforms",), "a rule stacks or unstacks over one placeholder at most"))
        for kind, var in over.items():
            if var not in all_vars:
                side = "from" if kind == "stack" else "to"
                problems.append(ir.problem(rule.path + ("transforms",), f"{kind} over '{var}': its '{side}' templates "
                                           f"have no placeholder {{{var}}} (they have: {', '.join(sorted(all_vars)) or 'none'})"))
        for i, vs in enumerate(src_vars):
            want = all_vars - ({over["unstack"]} if "unstack" in over else set())
            if vs != want:
                problems.append(ir.problem(rule.path + ("from",), f"source '{rule.sources[i]}' must use the placeholders {sorted(want)}, it uses {sorted(vs)}"))
        for i, vs in enumerate(tgt_vars):
            want = all_vars - ({over["stack"]} if "stack" in over else set())
            if vs != want:
                problems.append(ir.problem(rule.path + ("to",), f"target '{rule.targets[i]}' must use the placeholders {sorted(want)}, it uses {sorted(vs)}"))
        n = len(rule.sources)
        try:
            for t in rule.transforms:
                name, arg = transform_name(t)
                if name in STACKING:
                    continue        # per value of the placeholder, as many tensors as before
                out = TRANSFORMS[name].arity(n, arg)
                n = len(rule.targets) if out is None else out
        except ValueError as err:
            problems.append(ir.problem(rule.path + ("transforms",), str(err)))
            n = len(rule.targets)
        if n != len(rule.targets):
            problems.append(ir.problem(rule.path, f"{len(rule.sources)} source(s) become {n} tensor(s) after the transforms, but the rule names {len(rule.targets)} target(s)"))
        for j, target in enumerate(rule.targets):
            rx = Template(target)
            hits = [t.name for t in tensors if rx.match(t.name)]
            if not hits:
                near = sorted(t.name for t in tensors)[:6]
                problems.append(ir.problem(rule.path + ("to",) + ((j,) if len(rule.targets) > 1 else ()),
                                             f"target '{target}' maps onto no param (params look like: {', '.join(near)}, ...)"))
            covered.update(hits)
    seen = set()
    for t in tensors:
        if t.name in seen:      # heads may each declare a param of the same name (a pooler)
            continue
        seen.add(t.name)
        if t.name not in covered and t.tied_to is None:
            problems.append(ir.problem(("weights",), f"param '{t.name}' is fed by no weight rule"))
    return problems
