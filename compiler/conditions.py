"""`when:` conditions as the IR holds them: a conjunction of config expressions, constants decided.

A condition splits at its top-level `and`s into conjuncts, so `when: a and b` includes `when: a` (a
value defined under `a` may be read there). Constant conjuncts are decided here: true ones drop out,
a false one makes the whole condition false (the param or line is not part of the block). What is
left depends on the config or the layer index: a run-time branch (compiler/ir.py's invariants).
"""
from __future__ import annotations

from runtime.expr import Expr, ExprError


def conjuncts(expr: Expr) -> list[Expr]:
    if expr.kind == "binary" and expr.value == "and":
        return [*conjuncts(expr.args[0]), *conjuncts(expr.args[1])]
    return [expr]


def decide(expr: Expr | None) -> tuple[tuple[Expr, ...] | None, str | None]:
    """(the conjuncts left to decide at run time: () always, None never, and a problem or None)."""
    if expr is None:
        return (), None
    out: list[Expr] = []
    for part in conjuncts(expr):
        if not part.is_constant():
            if part not in out:
                out.append(part)
            continue
        try:
            if not part.evaluate({}):
                return None, None
        except ExprError as err:
            return tuple(out), f"cannot decide this condition: {err}"
    return tuple(out), None


def describe(conds) -> str:
    """`a and (b or c)`: the conjuncts as one condition, as an author writes it."""
    return " and ".join(f"({c})" if c.kind == "binary" and c.value == "or" else str(c) for c in conds)
