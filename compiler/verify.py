"""`verify(ir)`: the IR's invariants (stated at the top of compiler/ir.py), checked after every pass
in the test suite. A failure is a bug in a pass, not in the spec: it raises IRError naming the block,
the node and what broke."""
from __future__ import annotations

import networkx as nx

from compiler.conditions import describe
from compiler.ir import REGION, STRUCTURAL, Block, ModelIR, Node
from compiler.ops import OPS
from compiler.ops.registry import InferCtx, ShapeError
from compiler.symbolic import same_type
from runtime.quant.config import LINEAR_ROLES


class IRError(AssertionError):
    """An IR invariant does not hold after a pass."""


def verify(ir: ModelIR, after: str = "") -> None:
    where = f" after {after}" if after else ""
    for block in ir.blocks.values():
        problems = _block_problems(ir, block)
        if problems:
            raise IRError(f"IR invariant broken{where} in block '{block.name}':\n  " + "\n  ".join(problems))


def _block_problems(ir: ModelIR, block: Block) -> list[str]:
    out: list[str] = []
    if not nx.is_directed_acyclic_graph(block.graph):
        return ["the block graph has a cycle"]
    defined: dict[str, str] = {v: "input" for v in block.inputs}
    exists_when: dict[str, tuple] = {}       # values that exist only under conditions
    used_params: set[str] = set()
    for node in block.order():
        for vid in node.reads:
            if vid not in defined:
                out.append(f"{node.id} ({node.op}) reads '{vid}' before any definition")
        out += _condition_problems(block, node, exists_when)
        out += _edge_problems(block, node, defined)
        for vid in node.outputs:
            if vid in defined:
                out.append(f"value '{vid}' defined twice ({defined[vid]} and {node.id})")
            if vid not in block.values:
                out.append(f"{node.id} defines '{vid}', which has no type")
            defined[vid] = node.id
        members = node.region.nodes if node.region is not None else [node]
        if node.region is not None:
            out += _region_problems(block, node)
            if node.region.fused_param is not None:
                used_params.add(node.region.fused_param)
        for member in members:
            used_params.update(member.params.values())
            if member.op in STRUCTURAL:
                used_params.add(member.block)
                out += _call_problems(ir, block, member)
            elif member.op != REGION:
                out += _type_problems(block, member)
    for vid in block.outputs:
        if vid not in defined:
            out.append(f"output '{vid}' is never defined")
        if vid in exists_when:
            out.append(f"output '{vid}' exists only when {describe(exists_when[vid])}")
    for name, p in block.params.items():
        if p.fused_into is not None:
            if p.fused_into not in block.params or name not in block.params[p.fused_into].members:
                out.append(f"param '{name}' says it is fused into '{p.fused_into}', which does not list it")
            continue
        if name not in used_params:
            out.append(f"param '{name}' is used by no node")
    return out + _quant_problems(block)


def _condition_problems(block: Block, node: Node, exists_when: dict[str, tuple]) -> list[str]:
    """The `when` rules of compiler/ir.py: what a node reads exists wherever it runs; each output
    either keeps an earlier value of its type when the node does not run, or exists only where it runs."""
    out = []
    conds = set(node.when)
    if any(c.is_constant() for c in node.when):
        out.append(f"{node.id} ({node.op}): a constant condition was not decided")
    if node.when and node.region is not None:
        out.append(f"{node.id}: a region under a condition")
    members = node.region.nodes if node.region is not None else [node]
    if any(m.when for m in members if m is not node):
        out.append(f"{node.id}: region {node.region.name} has a member under a condition")
    for vid in node.inputs.values():
        if not set(exists_when.get(vid, ())) <= conds:
            out.append(f"{node.id} ({node.op}) reads '{vid}', which exists only when "
                       f"{describe(exists_when[vid])}, outside that condition")
    for m in members:
        for pname in m.params.values():
            p = block.params.get(pname)
            if p is not None and not set(p.when) <= set(m.when) | conds:
                out.append(f"{m.id} ({m.op}) uses param '{pname}' outside its condition")
        if m.op in STRUCTURAL and m.block in block.params and not set(block.params[m.block].when) <= conds:
            out.append(f"{m.id} ({m.op}) runs '{m.block}' outside its condition")
    if node.orelse and not node.when:
        out.append(f"{node.id} ({node.op}): orelse values on a node that always runs")
    for o, kept in node.orelse.items():
        if o not in node.outputs:
            out.append(f"{node.id} ({node.op}): orelse names '{o}', not one of its outputs")
        elif kept in exists_when or (kept in block.values and o in block.values
                                     and not same_type(block.values[kept].type, block.values[o].type)):
            out.append(f"{node.id} ({node.op}): '{o}' keeps '{kept}' when it does not run, which is conditional "
                       "or of another type")
    for o in node.outputs:
        if node.when and o not in node.orelse:
            exists_when[o] = node.when
    return out


def _edge_problems(block: Block, node: Node, defined: dict[str, str]) -> list[str]:
    want = {(defined[v], v) for v in node.reads if defined.get(v, "input") != "input"}
    have = {(u, k) for u, _, k in block.graph.in_edges(node.id, keys=True)}
    if want != have:
        return [f"{node.id} ({node.op}): edges {sorted(have)} do not mirror its operands {sorted(want)}"]
    return []


def _region_problems(block: Block, node: Node) -> list[str]:
    region = node.region
    out = []
    inside = {o for m in region.nodes for o in m.outputs}
    reads = list(dict.fromkeys(v for m in region.nodes for v in m.inputs.values() if v not in inside))
    if sorted(reads) != sorted(region.inputs) or sorted(region.inputs) != sorted(node.inputs.values()):
        out.append(f"region {region.name}: inputs {region.inputs} are not what its members read from outside {reads}")
    if region.outputs != node.outputs or not set(region.outputs) <= inside:
        out.append(f"region {region.name}: outputs {region.outputs} are not member outputs")
    later = {v for n in block.nodes() if n.id != node.id for v in n.reads} | set(block.outputs)
    escaping = [o for o in inside if o in later]
    if not set(escaping) <= set(region.outputs):
        out.append(f"region {region.name}: {sorted(set(escaping) - set(region.outputs))} are read after it but not outputs")
    for m in region.nodes:
        if block.graph.has_node(m.id):
            out.append(f"region {region.name}: member {m.id} is still in the block graph")
    return out


def _type_problems(block: Block, node: Node) -> list[str]:
    op = OPS.get(node.op)
    if op is None:
        return [f"{node.id}: unknown op '{node.op}'"]
    if not all(v in block.values for v in node.inputs.values()):
        return []      # an undefined operand is reported as such
    params = {f: block.params[p] for f, p in node.params.items() if p in block.params}
    if len(params) != len(node.params):
        return [f"{node.id} ({node.op}): reads params {node.params}, not all in the block"]
    ctx = InferCtx(op, {f: block.values[v].type for f, v in node.inputs.items()}, node.attrs, params)
    try:
        types = op.infer(ctx)
    except ShapeError as err:
        return [f"{node.id} ({node.op}): its shape rule fails on its operands: {err}"]
    recorded = [block.values[o].type for o in node.outputs]
    if len(types) != len(recorded) or not all(same_type(a, b) for a, b in zip(types, recorded)):
        return [f"{node.id} ({node.op}): outputs typed {[str(t) for t in recorded]}, its rule says {[str(t) for t in types]}"]
    return []


def _call_problems(ir: ModelIR, block: Block, node: Node) -> list[str]:
    p = block.params.get(node.block)
    if p is None or p.kind != "block" or p.block not in ir.blocks:
        return [f"{node.id} ({node.op}) runs '{node.block}', not a block param of '{block.name}'"]
    callee = ir.blocks[p.block]
    out = []
    if set(node.inputs) != {callee.values[i].name for i in callee.inputs}:
        out.append(f"{node.id} ({node.op} {p.block}): arguments {sorted(node.inputs)} are not the callee's inputs")
    if len(node.outputs) != len(callee.outputs):
        out.append(f"{node.id} ({node.op} {p.block}): {len(node.outputs)} outputs for the callee's {len(callee.outputs)}")
    if node.op == "repeat":
        names = {callee.values[i].name for i in callee.inputs}
        carried = [callee.values[o].name for o in callee.outputs]
        if not set(carried) <= names:
            out.append(f"{node.id} (repeat {p.block}): outputs {carried} do not all feed an input of the same name")
    return out


def _quant_problems(block: Block) -> list[str]:
    """The IR invariant for marks (compiler/ir.py): each read of a marked param is quantizable in
    its role's way; a fused param and its members agree."""
    out = []
    for node in block.ops():
        op = OPS.get(node.op)
        for field, name in node.params.items():
            p = block.params.get(name)
            if p is None or p.quant is None:
                continue
            how = op.quantizable.get(field) if op else None
            want = "linear" if p.quant in LINEAR_ROLES else p.quant
            if how is None or how[0] != want:
                out.append(f"{node.id} ({node.op}) reads param '{name}', marked quantized as {p.quant}, through "
                           f"'{field}', which does not read it that way")
    for p in block.params.values():
        if p.kind == "fused_linear":
            marks = {block.params[m].quant for m in p.members}
            if marks != {p.quant}:
                out.append(f"fused param '{p.name}' is marked {p.quant} but its members {sorted(map(str, marks))}")
    return out
