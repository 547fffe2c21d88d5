"""The fusion report (`graphspec compile --explain`, fusion.txt) and its manifest entry, read off
the IR: each block's regions with their member ops, then every decision taken or refused."""
from __future__ import annotations

from compiler.ir import REGION, ModelIR
from compiler.printer import spec_text


def explain(ir: ModelIR) -> str:
    if not ir.fused:
        return "fusion disabled (--no-fuse)"
    lines = []
    for block in ir.blocks.values():
        regions = [n.region for n in block.order() if n.op == REGION]
        lines.append(f"block {block.name}:")
        if not regions:
            lines.append("  (no fusible ops)")
        for r in regions:
            lines.append(f"  group {r.name} [{r.template}]: {' + '.join(n.op for n in r.nodes)}")
            lines += [f"      {spec_text(block, n)}" for n in r.nodes]
            if r.fused_param:
                members = block.params[r.fused_param].members
                lines.append(f"      weights: {r.fused_param} = concat({', '.join(members)}) on dim 0, at load time")
            if r.function is not None and r.function.name != r.name:
                lines.append(f"      computed by {r.function.name}()")
        for d in ir.decisions:
            if d.block == block.name:
                mark = "fused  " if d.taken else "refused"
                lines.append(f"  {mark} {d.rule:<10} {d.what}: {d.reason}")
    return "\n".join(lines)


def fusion_manifest(ir: ModelIR) -> dict:
    out = {"enabled": ir.fused, "groups": {}, "refused": [], "fused_params": {}}
    for block in ir.blocks.values():
        regions = [n.region for n in block.order() if n.op == REGION]
        if regions:
            out["groups"][block.name] = [{
                "name": r.name, "template": r.template, "ops": [n.op for n in r.nodes],
                "lines": [spec_text(block, n) for n in r.nodes],
                "inputs": [block.values[v].name for v in r.inputs],
                "outputs": [block.values[v].name for v in r.outputs],
                "function": r.function.name if r.function is not None else None} for r in regions]
        fused = {p.name: p.members for p in block.params.values() if p.kind == "fused_linear"}
        if fused:
            out["fused_params"][block.name] = fused
    out["refused"] = [f"{d.block}: {d.rule} {d.what}: {d.reason}" for d in ir.decisions if not d.taken]
    return out
