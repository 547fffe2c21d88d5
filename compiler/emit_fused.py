"""Emission of fused groups into model.py: one call per group, one method per group.

A group's method holds the PyTorch code of the spec ops it implements (what runs on CPU) and,
when the artifact has Triton kernels, the dispatch to its kernel. A fused projection is one
`ops.FusedLinear` param whose weight the loader concatenates from the spec's params.
"""
from __future__ import annotations

from compiler.ir import BlockIR, Node
from compiler.passes.fusion import FusedParam, Group, contracted_order


def module_header(fusion) -> list[str]:
    if fusion is None or not getattr(fusion, "kernels", None):
        return []
    return ["from runtime.kernels import load_kernels", "", "kernels = load_kernels(__file__)"]


def params_by_member(fusion, block: str) -> dict[str, FusedParam]:
    if fusion is None:
        return {}
    return {m: fp for fp in fusion.fused_params(block).values() for m in fp.members}


def param_init(fp: FusedParam, py) -> str:
    parts = ", ".join(f'"{m}": {py(size)}' for m, size in zip(fp.members, fp.sizes))
    bias = "" if fp.bias is None else f", bias={py(fp.bias)}"
    return f"        self.{fp.name} = ops.FusedLinear({py(fp.dim_in)}, {{{parts}}}{bias})"


def units(block: BlockIR, fusion) -> list:
    return contracted_order(block, fusion) if fusion is not None and fusion.enabled else block.order()


def _unit_io(unit) -> tuple[list[str], list[str]]:
    if isinstance(unit, Group):
        return unit.inputs, unit.outputs
    return list(unit.inputs.values()), unit.outputs


def value_names(block: BlockIR, order: list, initial: list[str] | None = None) -> dict[str, str]:
    """Python names for values: the spec's names, except where moving fused ops together would let
    a rebinding shadow a value still to be read; those get a unique name (`x_1` for value `x.1`)."""
    marked: set[str] = set()
    while True:
        env = {}
        for vid in (block.inputs if initial is None else initial):
            if vid not in marked:
                env[block.values[vid].name] = vid
        changed = False
        for unit in order:
            ins, outs = _unit_io(unit)
            for v in ins:
                if v not in marked and env.get(block.values[v].name) != v:
                    marked.add(v)
                    changed = True
            for o in outs:
                if o not in marked:
                    env[block.values[o].name] = o
        if not changed:
            break
    taken = {v.name for v in block.values.values()}
    names = {}
    for vid, value in block.values.items():
        if vid in marked:
            name = vid.replace(".", "_")
            while name in taken:
                name += "_"
            names[vid] = name
        else:
            names[vid] = value.name
    return names


def attention_slots(order: list) -> dict[str, str]:
    """KV-cache slot of each context op, keyed by node id: the module, then (module, k)."""
    from compiler.ops import OPS
    nodes = []
    for unit in order:
        members = unit.members if isinstance(unit, Group) else [unit]
        nodes += [n for n in members if n.block is None and n.op == "attention" and OPS[n.op].context]
    return {n.id: ("self" if i == 0 else f"(self, {i})") for i, n in enumerate(nodes)}


def _shape_comment(block: BlockIR, group: Group) -> str:
    return "; ".join(f"[{', '.join(str(d) for d in block.values[o].type.shape)}]" for o in group.outputs)


def call_line(block: BlockIR, group: Group, names: dict[str, str], with_shape) -> str:
    outs = ", ".join(names[o] for o in group.outputs)
    if group.fused_param is not None:
        line = f"        {outs} = self.{group.name}({names[group.inputs[0]]})"
    else:
        ctx = ["ctx"] if any(n.op == "attention" for n in group.members) else []
        line = f"        {outs} = self.{group.name}({', '.join([names[v] for v in group.inputs] + ctx)})"
    pad = max(1, 72 - len(line))
    return f"{line}{' ' * pad}# {_shape_comment(block, group)}"


def group_method(block: BlockIR, group: Group, names: dict[str, str], slots: dict[str, str], node_line,
                 has_ctx: bool) -> list[str]:
    if group.fused_param is not None:
        return []     # the FusedLinear module is the whole implementation
    local = value_names(block, group.members, initial=group.inputs)
    uses_ctx = any(n.op == "attention" for n in group.members)
    args = [local[v] for v in group.inputs] + (["ctx"] if uses_ctx else [])
    lines = ["", f"    def {group.name}(self, {', '.join(args)}):",
             f'        """Fused group ({group.template}), spec ops: '
             + "; ".join(_spec_text(block, n) for n in group.members) + '"""']
    body = []
    kernel = getattr(group, "kernel", None)
    if kernel is not None:
        body += [f"        if kernels.{kernel.dispatch}({local[group.inputs[0]]}):",
                 f"            return kernels.{kernel.name}({kernel.call_args(local, slots)})"]
    for n in group.members:
        body.append(f"        {node_line(block, n, local, slots)}")
    body.append(f"        return {', '.join(local[o] for o in group.outputs)}")
    if any("cfg." in line for line in body):
        lines.append("        cfg = self.cfg")
    return lines + body


def _spec_text(block: BlockIR, node: Node) -> str:
    outs = ", ".join(block.values[o].name for o in node.outputs)
    args = [block.values[v].name for v in node.inputs.values()] + [f"{k}={v}" for k, v in node.params.items()]
    return f"{outs} = {node.op}({', '.join(args)})"
