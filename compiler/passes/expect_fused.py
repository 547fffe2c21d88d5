"""The check_expect_fused pass: a spec's `expect_fused: [add+rms_norm, ...]` contracts.

Each entry must be inside one fused region somewhere in the model; otherwise the compile fails at
that entry's line, with the refusals that concerned those ops.
"""
from __future__ import annotations

from compiler.errors import SpecError
from compiler.ir import ModelIR


def check_expect_fused(ir: ModelIR) -> None:
    formed = [[n.op for n in region.nodes] for _, region in ir.regions()]
    problems = []
    for entry, path in ir.expect_fused:
        ops = entry.split("+")
        if any(all(g.count(o) >= ops.count(o) for o in ops) for g in formed):
            continue
        refused = [f"{d.block}: {d.what}: {d.reason}" for d in ir.decisions
                   if not d.taken and set(d.ops) & set(ops)]
        why = ("; refused: " + " | ".join(refused[:4])) if refused else "; no candidate for it was found"
        problems.append(ir.problem(path, f"required fusion '{entry}' did not happen{why}"))
    if problems:
        raise SpecError(problems)
