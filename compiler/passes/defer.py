"""The defer_carried_ops pass: fusion across block boundaries, vLLM's fused_add_rms_norm as a rewrite.

A repeated block (a decoder layer) ends with the op that makes its carried output (the residual
add `x = x + h`), and the next layer starts with the op that reads it (its first norm). Fusion works
inside a block, so each layer would end with a lone `add` and start with a lone `rms_norm`. This pass
moves that last op across the boundary: the layer returns the op's operands instead of its result,
and the op runs at the start of the next layer, where it fuses with the first norm; the last
layer's one runs after the loop, where it fuses with the final norm. So a Llama layer becomes
[add + rms_norm, attention, add + rms_norm, mlp].

The first layer has no pending op: it starts from the op's identity (`add` declares 0 for either
operand: x + 0 is x exactly), made before the loop by `full_like`. An op qualifies when it declares
an identity for one operand, all three values (result and operands) have the same type, its result is
read only as the carried output, and something at the start of the layer can take it as a prologue
(a fusible op reading the carried input); otherwise nothing changes.
"""
from __future__ import annotations

from dataclasses import dataclass

from compiler.ir import STRUCTURAL, Block, Decision, ModelIR, Node
from compiler.ops import OPS
from compiler.passes.fusion import chains, template_of
from compiler.printer import op_label
from compiler.symbolic import same_type
from runtime.expr import parse_expr


def defer_carried_ops(ir: ModelIR) -> None:
    repeated = {block.params[n.block].block for block in ir.blocks.values() for n in block.ops() if n.op == "repeat"}
    for block in list(ir.blocks.values()):      # callees first: a caller's new tail may defer in turn
        if block.name not in repeated:
            continue
        for out in list(block.outputs):
            _defer(ir, block, out)


def _defer(ir: ModelIR, block: Block, out: str) -> None:
    producers = block.producers()
    if out not in producers:
        return
    tail = block.node(producers[out])
    op = OPS.get(tail.op)
    if op is None or not op.identity or len(tail.inputs) != 2 or tail.outputs != [out] or tail.when:
        return
    delta_field = next((f for f in reversed(list(tail.inputs)) if f in op.identity), None)
    if delta_field is None:
        return
    base_field = next(f for f in tail.inputs if f != delta_field)
    base, delta = tail.inputs[base_field], tail.inputs[delta_field]
    carried = next((i for i in block.inputs if block.values[i].name == block.values[out].name), None)
    t_out = block.values[out].type
    if (carried is None or block.outputs.count(out) != 1 or block.users(out) or base == delta
            or not same_type(block.values[base].type, t_out) or not same_type(block.values[delta].type, t_out)):
        return
    starts = [u for u in block.users(carried) if (t := template_of(u)) is not None and chains(t) and not u.when]
    if not starts:
        return
    # the block: the op leaves the end; its operands are returned; it runs first, on the pending delta
    pending = block.fresh_value(_input_name(block, block.values[delta].name), t_out)
    position = block.outputs.index(out)
    block.inputs.insert(block.inputs.index(carried) + 1, pending.id)   # read beside the value it completes
    block.remove(tail.id)
    block.outputs[position] = base
    block.outputs.append(delta)
    resolved = block.fresh_value(block.values[carried].name, t_out)
    first = min(n.index for n in block.nodes()) - 1
    head = Node(block.fresh_node_id(f"{tail.id}.deferred"), tail.op, {}, {}, dict(tail.attrs), [resolved.id], tail.loc, first)
    block.replace_uses(carried, resolved.id)
    head.inputs = {base_field: carried, delta_field: pending.id}
    block.add(head)
    ir.decisions.append(Decision(block.name, "defer", f"{op_label(block, tail)} -> {op_label(block, starts[0])}", True,
                                 f"the layer returns the operands of {tail.op}; the next layer starts with it, "
                                 "where it fuses (the first from the identity, the last after the loop)",
                                 ops=(tail.op, starts[0].op)))
    deferred = Deferred(tail, base_field, delta_field, block.values[carried].name, pending.name, position,
                        op.identity[delta_field])
    for caller in ir.blocks.values():
        for node in [n for n in caller.ops() if n.op in STRUCTURAL and caller.params[n.block].block == block.name]:
            _rewire_caller(caller, node, deferred)


@dataclass
class Deferred:
    op: Node                 # the op moved to the start of the block (its original node)
    base_field: str
    delta_field: str
    carried: str             # the name of the carried input it rebinds
    pending: str             # the block's new input: the pending operand
    position: int            # the block output that now holds the op's other operand
    identity: float          # the pending operand that makes the op do nothing


def _input_name(block: Block, name: str) -> str:
    names = {block.values[i].name for i in block.inputs}
    out, k = name, 2
    while out in names:
        out, k = f"{name}_{k}", k + 1
    return out


def _rewire_caller(caller: Block, node: Node, d: Deferred) -> None:
    """Before the call: the pending operand starts at the identity; after it: the deferred op."""
    carried_out = node.outputs[d.position]
    t = caller.values[carried_out].type
    start = caller.fresh_value(d.pending, t)
    init = Node(caller.fresh_node_id(f"{node.id}.start"), "full_like", {"x": node.inputs[d.carried]}, {},
                {"value": parse_expr(d.identity)}, [start.id], d.op.loc, node.index - 0.5)
    caller.add(init)
    caller.graph.remove_node(node.id)
    node.inputs[d.pending] = start.id
    delta_out = caller.fresh_value(d.pending, t)
    node.outputs.append(delta_out.id)
    if node.carried is None:
        node.carried = (d.op.op, dict(d.op.attrs), d.base_field, d.delta_field, d.position, len(node.outputs) - 1)
    caller.add(node)
    result = caller.fresh_value(caller.values[carried_out].name, t)
    post = Node(caller.fresh_node_id(f"{node.id}.then"), d.op.op, {}, {}, dict(d.op.attrs), [result.id],
                d.op.loc, node.index + 0.5)
    caller.replace_uses(carried_out, result.id)
    post.inputs = {d.base_field: carried_out, d.delta_field: delta_out.id}
    caller.add(post)
