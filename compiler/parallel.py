"""The tensor-parallel plan as data (what the shard pass decided, compiler/passes/shard.py) and its two
text forms: `parallel.json`, which the runtime reads to load each rank's slices
(runtime/parallel/plan.py), and the `--tp N --explain` report. Both are pure functions of the IR.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from runtime.expr import Expr

FORMAT = 1


@dataclass
class SplitTensor:
    tensor: str          # a model tensor template: "layers.{i}.attn.q_proj.weight"
    dim: int             # the tensor dim split across the ranks
    start: Expr          # the first element of that dim this rank holds (config names, tp_rank, tp_size)
    length: Expr         # how many it holds
    how: str             # what the split is, for the report


@dataclass
class Collective:
    block: str
    op: str              # all_reduce | all_gather
    value: str           # the value it joins
    after: str           # the op producing it, as `op(value)`
    loc: str
    why: str
    index: float = 0     # its place in the block (the report lists collectives in the author's order)


@dataclass
class ParallelPlan:
    size: str                                   # the config name of the number of ranks
    rank: str                                   # the config name of this rank
    split: list[SplitTensor] = field(default_factory=list)
    rank0: dict[str, str] = field(default_factory=dict)        # tensor -> why only rank 0 holds it
    replicated: dict[str, str] = field(default_factory=dict)   # tensor -> why every rank holds all of it
    collectives: list[Collective] = field(default_factory=list)
    checks: list = field(default_factory=list)                 # compiler.spec.Check, also in ir.checks
    config: list[str] = field(default_factory=list)            # config entries the pass added


def plan_json(plan: ParallelPlan) -> dict:
    """What the runtime reads: per tensor, the slice each rank loads (expressions over the config)."""
    return {
        "format": FORMAT, "size": plan.size, "rank": plan.rank,
        "split": [{"tensor": s.tensor, "dim": s.dim, "start": str(s.start), "length": str(s.length)}
                  for s in plan.split],
        "rank0": sorted(plan.rank0),
        "collectives": [{"block": c.block, "op": c.op, "value": c.value, "after": c.after, "why": c.why}
                        for c in plan.collectives],
    }


def explain_parallel(plan: ParallelPlan, ranks: int) -> str:
    """The plan for `ranks` ranks: every tensor's share, every collective inserted, the load-time checks."""
    out = [f"tensor parallelism over {ranks} rank(s) ({plan.size}={ranks}; each rank {plan.rank} = 0..{ranks - 1}):"]
    out.append(f"split ({len(plan.split)} tensors):")
    width = max((len(s.tensor) for s in plan.split), default=0)
    for s in plan.split:
        out.append(f"  {s.tensor:<{width}}  dim {s.dim}: {s.how}")
    if plan.rank0:
        out.append(f"rank 0 only ({len(plan.rank0)} tensors; zeros on the others):")
        out += [f"  {t}: {why}" for t, why in plan.rank0.items()]
    out.append(f"replicated ({len(plan.replicated)} tensors):")
    out += [f"  {t}: {why}" for t, why in plan.replicated.items()]
    out.append(f"collectives ({len(plan.collectives)}, per call of their block):")
    for c in plan.collectives:
        out.append(f"  {c.block}: {c.op}({c.value}) after {c.after} ({c.loc}) - {c.why}")
    if plan.checks:
        out.append("checked when a checkpoint is loaded:")
        out += [f"  {c.that}" for c in plan.checks]
    return "\n".join(out)
