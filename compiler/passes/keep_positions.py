"""Cut the model's position-wise tail so a caller can ask for the last positions only.

Generation needs the next-token logits of the last position alone; the ops between the last one
that mixes positions (attention, a layer stack) and the logits act on each position separately (the
final norm, the LM head, a softcap). The pass finds that tail in the model block and inserts a
`keep_positions` node on every value entering it: at run time the identity, unless the forward
context asks for the last k positions (`ctx.keep_positions = k`, as Transformers' `logits_to_keep`).
For a 512-token prompt through Llama-135M, the LM head alone is a quarter of the prefill's FLOPs.

The output is the one generation reads (the runtime contract's logits). A node joins the tail when
its op is per-position (`OpDef.per_position`), every operand is either [B, S, ...] with the logits'
B and S or a rank <= 1 tensor that broadcasts, and everything its
outputs feed is in the tail (nothing else may see a cut tensor). Nothing found: nothing inserted.
"""
from __future__ import annotations

from compiler.ir import Block, ModelIR, Node, Value
from compiler.ops import OPS
from compiler.printer import const_value
from compiler.symbolic import same_value

def insert_keep_positions(ir: ModelIR) -> None:
    """Rewrite the model block in place; ir.keep_positions lists the values cut (empty: no tail).
    The tail is the one of the output generation reads (the contract's logits); a model that does
    not generate gets no cut."""
    block = ir.model
    generate = ir.contract.generate if ir.contract is not None else None
    if generate is None:
        return
    out = next((v for v in block.outputs if block.values[v].name == generate["logits"]), None)
    if out is None or len(block.values[out].type.shape) < 3:
        return
    lead = block.values[out].type.shape[:2]
    tail = _tail(block, out, lead)
    if tail:
        ir.keep_positions = _cut(block, tail)


def _leads_with(block: Block, vid: str, lead: tuple) -> bool:
    shape = block.values[vid].type.shape
    return len(shape) >= 2 and all(same_value(a, b) for a, b in zip(shape[:2], lead))


def _tail(block: Block, out: str, lead: tuple) -> dict[str, Node]:
    tail: dict[str, Node] = {}
    users: dict[str, set[str]] = {}
    order = block.order()
    for node in order:
        for vid in node.reads:
            users.setdefault(vid, set()).add(node.id)
    outputs = set(block.outputs)
    for node in reversed(order):
        op = OPS.get(node.op)
        rank = len(block.values[next(iter(node.inputs.values()))].type.shape) if node.inputs else 0
        if op is None or not op.per_position({k: const_value(v) for k, v in node.attrs.items()}, rank) or node.when:
            continue
        if not all(_leads_with(block, o, lead) for o in node.outputs):
            continue
        if not all(_leads_with(block, v, lead) or len(block.values[v].type.shape) <= 1
                   for v in node.inputs.values()):
            continue
        feeds = [users.get(o, set()) for o in node.outputs]
        if any(o in outputs and o != out for o in node.outputs):
            continue
        if all(u <= tail.keys() for u in feeds) and (any(feeds) or out in node.outputs):
            tail[node.id] = node
    return tail


def _cut(block: Block, tail: dict[str, Node]) -> list[str]:
    produced = {o for n in tail.values() for o in n.outputs}
    first_node = min(tail.values(), key=lambda n: n.index)
    first = first_node.index
    entering = []
    for node in sorted(tail.values(), key=lambda n: n.index):
        for vid in node.inputs.values():
            if vid not in produced and vid not in entering and len(block.values[vid].type.shape) >= 2:
                entering.append(vid)
    names = {v.name for v in block.values.values()}
    for k, vid in enumerate(entering):
        value = block.values[vid]
        outside = vid in block.outputs or any(u.id not in tail for u in block.users(vid))
        # the cut value keeps its name unless something outside the tail still reads the full one
        name = _fresh(f"{value.name}_kept", names) if outside else value.name
        names.add(name)
        new = Value(f"{vid}.kept", name, value.type)
        block.values[new.id] = new
        # just before the tail's first node, in the author's order
        node = Node(f"keep_positions.{vid}", "keep_positions", {"x": vid}, {}, {}, [new.id],
                    first_node.loc, first - 0.5 + k / (2 * len(entering) + 2))
        block.add(node)
        block.replace_uses(vid, new.id, among=list(tail.values()))
    return [block.values[v].name for v in entering]


def _fresh(name: str, taken: set[str]) -> str:
    k, candidate = 2, name
    while candidate in taken:
        candidate, k = f"{name}{k}", k + 1
    return candidate
