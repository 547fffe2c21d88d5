"""The select_kernels pass: each fused region gets the function model.py calls for it and, where a
Triton template takes it, the kernel that function dispatches to on CUDA.

A region's function is written over local names (the region's own view of its values, params and
attributes), so regions that compute the same thing share one function and one kernel wherever
they are: the residual add + RMSNorm that starts every Llama layer, the one in its middle and the
one before the LM head are all `add_rms_norm`. A projection is one FusedLinear module call and a
single op with no kernel is printed in place: neither gets a function.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from compiler.ir import Block, ModelIR, Node, Region
from compiler.names import MODULE_NAMES
from compiler.ops import OPS
from compiler.printer import SYMBOLIC, class_name, const_value, spec_text, value_names
from compiler.triton.templates import TEMPLATES


@dataclass
class GroupFunction:
    """What model.py defines for one distinct region body."""
    name: str
    view: Region                      # the region over local names (node ids m0, m1, ...)
    kernel: object = None             # KernelSource, or None: the function is its PyTorch code alone
    params: list[str] = field(default_factory=list)           # local param names, call order
    attrs: list[tuple[int, str]] = field(default_factory=list)   # (member, attribute) passed in
    context: bool = False             # takes the forward context
    slots: list[int] = field(default_factory=list)            # members that own a KV-cache slot


def select_kernels(ir: ModelIR) -> None:
    taken = set(MODULE_NAMES) | {class_name(b.name) for b in ir.blocks.values()} | {class_name(ir.name)}
    for block in ir.blocks.values():
        taken |= {v.name for v in block.values.values()} | set(block.params)
    functions: dict[tuple, GroupFunction] = {}
    for block, region in ir.regions():
        if region.fused_param is not None:
            continue
        view, params, attrs = _view(block, region)
        key = _key(view, attrs)
        fn = functions.get(key)
        if fn is None:
            name = _fresh(region.name, taken)
            taken.add(name)
            view.name = name
            template = TEMPLATES.get(region.template)
            kernel = template(name, _doc(view), None, _single_assignment(view), OPS) if template is not None else None
            fn = GroupFunction(name, view, kernel, params, attrs,
                               any(OPS[n.op].context for n in view.nodes),
                               [i for i, n in enumerate(view.nodes) if OPS[n.op].kv_cache])
            functions[key] = fn
        region.function = fn if (fn.kernel is not None or len(region.nodes) > 1) else None
        region.kernel = fn.kernel if region.function is not None else None


def _view(block: Block, region: Region) -> tuple[Region, list[str], list[tuple[int, str]]]:
    """The region over local names: values named as in the block (renamed where fusing reorders
    them), params by the op field that reads them (w, w_2), members m0, m1, ..."""
    names = dict(value_names(block, region.nodes, initial=region.inputs))
    taken = {"ctx", "slot"}
    for v in region.inputs:        # distinct values may share a spec name: parameters may not
        base, k = names[v], 2
        while names[v] in taken:
            names[v], k = f"{base}_{k}", k + 1
        taken.add(names[v])
    taken |= {names[o] for n in region.nodes for o in n.outputs}
    local_params: dict[str, str] = {}
    attrs: list[tuple[int, str]] = []
    nodes = []
    for i, n in enumerate(region.nodes):
        params = {}
        for f, p in n.params.items():
            if p not in local_params:
                base, k = f, 2
                while base in local_params.values() or base in taken:
                    base, k = f"{f}_{k}", k + 1
                local_params[p] = base
            params[f] = local_params[p]
        attrs += [(i, a) for a, v in n.attrs.items() if const_value(v) is SYMBOLIC]
        nodes.append(Node(f"m{i}", n.op, {f: names[v] for f, v in n.inputs.items()}, params, dict(n.attrs),
                          [names[o] for o in n.outputs], n.loc, i, seq=n.seq))
    view = Region(region.name, region.template, nodes, [names[v] for v in region.inputs],
                  [names[o] for o in region.outputs])
    return view, list(local_params.values()), attrs


def _single_assignment(view: Region) -> Region:
    """The view with one name per value (a kernel has one pointer per tensor): a member output that
    rebinds a name (`x = add(x, h)`) gets a fresh one."""
    seen = set(view.inputs)
    rename: dict[str, str] = {}
    nodes = []
    for n in view.nodes:
        inputs = {f: rename.get(v, v) for f, v in n.inputs.items()}
        outputs = []
        for o in n.outputs:
            new, k = o, 2
            while new in seen:
                new, k = f"{o}_{k}", k + 1
            seen.add(new)
            rename[o] = new
            outputs.append(new)
        nodes.append(Node(n.id, n.op, inputs, dict(n.params), n.attrs, outputs, n.loc, n.index, seq=n.seq))
    return Region(view.name, view.template, nodes, list(view.inputs), [rename.get(o, o) for o in view.outputs])


def _key(view: Region, attrs) -> tuple:
    """What the body computes, with values by position (input k, output j of member i) rather than
    by name: regions that differ only in their values' names share a function."""
    where = {v: ("in", k) for k, v in enumerate(view.inputs)}
    members = []
    for i, n in enumerate(view.nodes):
        members.append((n.op, tuple((f, where[v]) for f, v in n.inputs.items()), tuple(n.params.items()), n.seq,
                        tuple((a, "<config>" if (i, a) in attrs else repr(const_value(v))) for a, v in n.attrs.items())))
        where.update({o: ("out", i, j) for j, o in enumerate(n.outputs)})
    return view.template, len(view.inputs), tuple(where[o] for o in view.outputs), tuple(members)


def _doc(view: Region) -> str:
    lines = []
    for n in view.nodes:
        args = [*n.inputs.values(), *(f"{k}={v}" for k, v in n.params.items())]
        lines.append(f"{', '.join(n.outputs)} = {n.op}({', '.join(args)})")
    return "; ".join(lines)


def _fresh(name: str, taken: set[str]) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    return out


__all__ = ["select_kernels", "GroupFunction", "spec_text"]
