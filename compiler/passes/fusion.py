"""The fusion pass: partition each block's ops into fused groups, from fusion kinds and graph structure.

Nothing here knows a model family. Ops declare a fusion kind in the registry (elementwise,
broadcast, reduction = a row reduction over the last dim, matmul, attention, injective, opaque) and
optionally a Triton lowering; the rules below only look at those, at value shapes and at who reads
what. Each rule separates legality (`can_fuse`: a reason when refused) from profit (`score`: an
estimate of memory traffic saved, in tensor reads/writes), and every decision, taken or refused, is
recorded so `graphspec compile --explain` can show it.

Rules, applied in this order:
- projection: linears reading the same input become one matmul over concatenated weights; the
  loader concatenates the checkpoint tensors at load time (`FusedParam` below says how).
- chain: a pointwise op joins the group of the pointwise op producing its operand.
- prologue / epilogue: a row reduction absorbs the pointwise group that computes its input (the
  group may still write its values when others read them: residual add + norm writes both), and
  pointwise consumers of its output.
- horizontal: independent ops with the same template reading a shared operand (rotary on q and k)
  become one kernel launch.
Groups are never allowed to create a cycle between groups (checked on the contracted graph).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from compiler.errors import SpecError
from compiler.ir import BlockIR, ModelIR, Node
from compiler.ops import OPS
from compiler.symbolic import canonical, same_value

POINTWISE = ("elementwise", "broadcast")
TEMPLATES = {"pointwise": "pointwise", "reduction": "row_reduction"}

# A fused group is a method of its block's nn.Module, so its name must not shadow an attribute of
# nn.Module (or of its class, `type`). A copy of torch 2.13's public ones, because the compiler must
# not import torch (over half of a cold compile); group names start with an op name, never with "_".
# tests/test_fusion.py checks the copy against the installed torch.
NN_MODULE_ATTRS = frozenset("""
    T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda double
    dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter get_submodule
    half ipu load_state_dict modules mro mtia named_buffers named_children named_modules
    named_parameters parameters register_backward_hook register_buffer register_forward_hook
    register_forward_pre_hook register_full_backward_hook register_full_backward_pre_hook
    register_load_state_dict_post_hook register_load_state_dict_pre_hook register_module
    register_parameter register_state_dict_post_hook register_state_dict_pre_hook requires_grad_
    set_extra_state set_submodule share_memory state_dict to to_empty train type xpu zero_grad
""".split())


@dataclass
class Group:
    id: str
    block: str
    template: str                 # pointwise | row_reduction | rope | flash_attention | projection
    nodes: list[str]              # node ids, in the block's order
    name: str = ""                # the function the emitted module calls
    inputs: list[str] = field(default_factory=list)    # value ids read from outside the group
    outputs: list[str] = field(default_factory=list)   # value ids read after the group (or returned)
    fused_param: "FusedParam | None" = None
    members: list = field(default_factory=list, repr=False)   # the Node objects, in order
    kernel: object = None          # the Triton kernel emitted for it (compiler.triton), if any


@dataclass
class FusedParam:
    """One linear replacing several: its weight is the members' weights concatenated on dim 0."""
    name: str
    members: list[str]            # param names, in concatenation order
    sizes: list                   # each member's output size (Exprs)
    dim_in: object
    bias: object


@dataclass
class Decision:
    block: str
    rule: str
    what: str                     # "add(x.1) -> rms_norm(h.2)"
    taken: bool
    reason: str
    score: int = 0


@dataclass
class FusionPlan:
    groups: dict[str, list[Group]] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    enabled: bool = True
    kernels: list = field(default_factory=list)      # KernelSource of each group that has one

    def group_of(self, block: str) -> dict[str, Group]:
        return {nid: g for g in self.groups.get(block, []) for nid in g.nodes}

    def fused_params(self, block: str) -> dict[str, FusedParam]:
        return {g.fused_param.name: g.fused_param for g in self.groups.get(block, []) if g.fused_param}

    def manifest(self, ir: ModelIR) -> dict:
        out = {"enabled": self.enabled, "groups": {}, "refused": [], "fused_params": {}}
        for bname, groups in self.groups.items():
            block = ir.blocks[bname]
            nodes = {n.id: n for n in block.order()}
            out["groups"][bname] = [{
                "name": g.name, "template": g.template, "ops": [nodes[n].op for n in g.nodes],
                "lines": [_node_text(block, nodes[n]) for n in g.nodes],
                "inputs": [block.values[v].name for v in g.inputs],
                "outputs": [block.values[v].name for v in g.outputs]} for g in groups]
            fps = {fp.name: fp.members for fp in self.fused_params(bname).values()}
            if fps:
                out["fused_params"][bname] = fps
        out["refused"] = [f"{d.block}: {d.rule} {d.what}: {d.reason}" for d in self.decisions if not d.taken]
        return out

    def explain(self, ir: ModelIR) -> str:
        lines = []
        for bname, block in ir.blocks.items():
            groups = self.groups.get(bname, [])
            nodes = {n.id: n for n in block.order()}
            lines.append(f"block {bname}:")
            if not groups:
                lines.append("  (no fusible ops)")
            for g in groups:
                ops = " + ".join(nodes[n].op for n in g.nodes)
                lines.append(f"  group {g.name} [{g.template}]: {ops}")
                for n in g.nodes:
                    lines.append(f"      {_node_text(block, nodes[n])}")
                if g.fused_param:
                    fp = g.fused_param
                    lines.append(f"      weights: {fp.name} = concat({', '.join(fp.members)}) on dim 0, at load time")
            for d in self.decisions:
                if d.block == bname:
                    mark = "fused  " if d.taken else "refused"
                    lines.append(f"  {mark} {d.rule:<10} {d.what}: {d.reason}")
        return "\n".join(lines)


def _node_text(block: BlockIR, node: Node) -> str:
    outs = ", ".join(block.values[o].name for o in node.outputs)
    args = [block.values[v].name for v in node.inputs.values()] + [f"{k}={v}" for k, v in node.params.items()]
    return f"{outs} = {node.op}({', '.join(args)})"


def _label(block: BlockIR, node: Node) -> str:
    return f"{node.op}({', '.join(block.values[o].name for o in node.outputs)})"


def template_of(node: Node) -> str | None:
    """The kernel template an op can enter, from its fusion kind and Triton lowering alone."""
    op = OPS.get(node.op)
    if op is None or op.triton is None:
        return None
    from compiler.emit import py
    from compiler.triton.templates import ROW_REDUCTIONS, SUPPORTS, TEMPLATES
    if callable(op.triton) and op.triton({k: py(v) for k, v in node.attrs.items()}) is None:
        return None     # these attributes have no Triton form (e.g. softcap with a null cap)
    if op.fusion in POINTWISE and (callable(op.triton) or "{" in op.triton):
        return "pointwise"
    if op.fusion == "reduction":
        return "row_reduction" if op.triton in ROW_REDUCTIONS else None
    if op.triton in TEMPLATES and SUPPORTS.get(op.triton, lambda n: True)(node):
        return op.triton    # a dedicated template: rope, flash_attention
    return None


class _BlockFusion:
    def __init__(self, ir: ModelIR, block: BlockIR, plan: FusionPlan):
        self.ir, self.block, self.plan = ir, block, plan
        self.decl = ir.spec.model if block.name == "model" else ir.spec.blocks[block.name]
        self.nodes = {n.id: n for n in block.order()}
        self.group: dict[str, str] = {}          # node id -> group key
        self.members: dict[str, list[str]] = {}  # group key -> node ids
        self.template: dict[str, str] = {}
        self.fused_params: dict[str, FusedParam] = {}
        self.producer = block.producers()
        for nid, node in self.nodes.items():
            t = template_of(node)
            if t in ("pointwise", "row_reduction"):
                out = self.shape(node.outputs[0])
                odd = [v for v in node.inputs.values() if not self.same_shape(self.shape(v), out)]
                if odd:
                    self.record("kernel", _label(block, node), False,
                                f"operand '{block.values[odd[0]].name}' is broadcast; kernels read full rows")
                    t = None
            if t is not None:
                self.group[nid] = nid
                self.members[nid] = [nid]
                self.template[nid] = t

    def record(self, rule, what, taken, reason, score=0):
        decision = Decision(self.block.name, rule, what, taken, reason, score)
        # Two ops joined by two values (rope_table's cos and sin into the layers) are one decision.
        if decision not in self.plan.decisions:
            self.plan.decisions.append(decision)

    # -- helpers --------------------------------------------------------------------------------
    def users(self, vid: str) -> list[str]:
        return [n.id for n in self.nodes.values() if vid in n.inputs.values()]

    def acyclic_with(self, nodes: set[str]) -> bool:
        """Contracting `nodes` into one unit, with the groups formed so far contracted too, keeps a DAG."""
        unit = {n: ("new" if n in nodes else self.group.get(n, n)) for n in self.nodes}
        q = nx.DiGraph()
        q.add_nodes_from(set(unit.values()))
        q.add_edges_from((unit[a], unit[b]) for a, b in self.block.graph.edges if unit[a] != unit[b])
        return nx.is_directed_acyclic_graph(q)

    def shape(self, vid: str):
        return self.block.values[vid].type.shape

    def same_shape(self, a, b) -> bool:
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))

    def domain(self, key: str):
        """The iteration shape of a group: the shape its pointwise/reduction ops compute over."""
        return self.shape(self.nodes[self.members[key][0]].outputs[0])

    def merge(self, a: str, b: str) -> str:
        for nid in self.members[b]:
            self.group[nid] = a
        self.members[a] = sorted(self.members[a] + self.members.pop(b), key=lambda n: self.nodes[n].index)
        ta, tb = self.template.get(a), self.template.pop(b)
        if "row_reduction" in (ta, tb):
            self.template[a] = "row_reduction"
        return a

    # -- rule: projection -------------------------------------------------------------------------
    def projections(self) -> None:
        by_input: dict[str, list[Node]] = {}
        for node in self.nodes.values():
            op = OPS.get(node.op)
            if op is not None and op.fusion == "matmul" and set(node.params) == {"w"}:
                by_input.setdefault(node.inputs["x"], []).append(node)
        for vid, nodes in by_input.items():
            if len(nodes) < 2:
                continue
            ok = []
            for node in nodes:
                reason = self.projection_refusal(node, nodes[0])
                if reason:
                    self.record("projection", _label(self.block, node), False, reason)
                else:
                    ok.append(node)
            if len(ok) < 2:
                continue
            names = [n.params["w"] for n in ok]
            fp = FusedParam(fused_name(names, set(self.decl.params)), names,
                            [self.decl.params[p].dims["out"] for p in names],
                            self.decl.params[names[0]].dims["in"], self.decl.params[names[0]].options.get("bias"))
            key = f"proj:{fp.name}"
            for n in ok:
                self.group[n.id] = key
            self.members[key] = [n.id for n in ok]
            self.template[key] = "projection"
            self.fused_params[key] = fp
            score = len(ok) - 1
            self.record("projection", " + ".join(_label(self.block, n) for n in ok), True,
                        f"one matmul reading '{self.block.values[vid].name}' once; weights {fp.name} = "
                        f"concat({', '.join(names)}) at load time", score)

    def projection_refusal(self, node: Node, first: Node) -> str | None:
        p = self.decl.params[node.params["w"]]
        p0 = self.decl.params[first.params["w"]]
        if p.tied_to:
            return f"'{p.name}' is tied to '{p.tied_to}': its storage cannot be concatenated"
        if any(q.tied_to == p.name for q in self.decl.params.values()):
            return f"another param is tied to '{p.name}'"
        uses = [n for n in self.nodes.values() if p.name in n.params.values()]
        if len(uses) > 1:
            return f"'{p.name}' is read by {len(uses)} ops"
        if not same_value(p.dims["in"], p0.dims["in"]):
            return f"input sizes differ: {p.dims['in']} vs {p0.dims['in']}"
        b, b0 = p.options.get("bias"), p0.options.get("bias")
        if canonical(b) != canonical(b0) if b is not None and b0 is not None else b is not b0:
            return f"bias conditions differ: {b} vs {b0}"
        return None

    # -- rules: chain, prologue/epilogue --------------------------------------------------------
    def edge_refusal(self, prod: str, cons: str, vid: str) -> str | None:
        pn, cn = self.nodes[prod], self.nodes[cons]
        for n in (pn, cn):
            if n.block is not None:
                return f"'{n.op}' of block '{n.block}' is opaque to fusion"
            op = OPS[n.op]
            if n.id not in self.group:
                return (f"'{n.op}' is {op.fusion}" + (" and has no Triton lowering" if op.fusion in POINTWISE + ("reduction",)
                                                      else ": no kernel template takes it"))
        gp, gc = self.group[prod], self.group[cons]
        if gp == gc:
            return None
        tp, tc = self.template[gp], self.template[gc]
        if "projection" in (tp, tc):
            return "a fused projection is a matmul; its epilogue is not fused (no GEMM template)"
        if tp not in ("pointwise", "row_reduction") or tc not in ("pointwise", "row_reduction"):
            t = tp if tp not in ("pointwise", "row_reduction") else tc
            return f"the {t} template takes no prologue or epilogue"
        if tp == tc == "row_reduction":
            return "two row reductions cannot share one pass over the row"
        if tc == "row_reduction" and any(OPS[self.nodes[n].op].fusion == "reduction" for n in self.members[gc]):
            # prologue: the consumer's reduction must read this value as its row
            red = next(self.nodes[n] for n in self.members[gc] if OPS[self.nodes[n].op].fusion == "reduction")
            if red.id == cons and vid != red.inputs.get("x"):
                return "the value is not the row the reduction reads"
        dp, dc = self.domain(gp), self.domain(gc)
        if not self.same_shape(dp, dc):
            return f"iteration shapes differ: [{', '.join(map(str, dp))}] vs [{', '.join(map(str, dc))}]"
        for n in (cn,):
            for v in n.inputs.values():
                if not self.same_shape(self.shape(v), dc):
                    return (f"operand '{self.block.values[v].name}' is broadcast "
                            f"([{', '.join(map(str, self.shape(v)))}]); kernels read full rows")
        if not self.acyclic_with(set(self.members[gp]) | set(self.members[gc])):
            return "fusing would make the groups depend on each other (a cycle)"
        return None

    def vertical(self) -> None:
        edges = []
        for cons in self.nodes.values():
            for vid in dict.fromkeys(cons.inputs.values()):
                prod = self.producer.get(vid)
                if prod is None:
                    continue
                users = self.users(vid)
                escapes = len(users) > 1 or vid in self.block.outputs
                # Traffic saved: the read of the intermediate, and its write when nothing else reads it.
                edges.append((1 if escapes else 2, prod, cons.id, vid))
        edges.sort(key=lambda e: (-e[0], self.nodes[e[2]].index))
        for score, prod, cons, vid in edges:
            what = f"{_label(self.block, self.nodes[prod])} -> {_label(self.block, self.nodes[cons])}"
            reason = self.edge_refusal(prod, cons, vid)
            if reason:
                self.record("vertical", what, False, reason)
                continue
            gp, gc = self.group[prod], self.group[cons]
            if gp == gc:
                continue
            kind = ("prologue" if self.template[gc] == "row_reduction" and self.template[gp] == "pointwise" else
                    "epilogue" if self.template[gp] == "row_reduction" else "chain")
            self.merge(gp, gc)
            keep = " (still written: read elsewhere)" if score == 1 else " (never written)"
            self.record("vertical", what, True, f"{kind}: '{self.block.values[vid].name}' stays in registers{keep}", score)

    # -- rule: horizontal ---------------------------------------------------------------------
    def horizontal(self) -> None:
        singles = [k for k, t in self.template.items()
                   if t not in ("pointwise", "row_reduction", "projection", "flash_attention") and len(self.members[k]) == 1]
        for i, a in enumerate(singles):
            if a not in self.members:
                continue
            for b in singles[i + 1:]:
                if b not in self.members or a not in self.members:
                    continue
                na, nb = self.nodes[self.members[a][-1]], self.nodes[b]
                if na.op != nb.op:
                    continue
                what = f"{_label(self.block, na)} | {_label(self.block, nb)}"
                shared = set(na.inputs.values()) & set(nb.inputs.values())
                if not shared:
                    self.record("horizontal", what, False, "no operand in common")
                    continue
                if not self.acyclic_with(set(self.members[a]) | {b}):
                    self.record("horizontal", what, False, "one depends on the other")
                    continue
                self.merge(a, b)
                names = ", ".join(self.block.values[v].name for v in sorted(shared))
                self.record("horizontal", what, True, f"one launch, shared operand(s) {names} read once", len(shared))

    # -- groups ---------------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        out, used_names = [], set(self.decl.params) | {"forward", "cfg"}
        keys = sorted(self.members, key=lambda k: min(self.nodes[n].index for n in self.members[k]))
        for i, key in enumerate(keys):
            nodes = self.members[key]
            inside = {o for n in nodes for o in self.nodes[n].outputs}
            inputs = list(dict.fromkeys(v for n in nodes for v in self.nodes[n].inputs.values() if v not in inside))
            outputs = [o for n in nodes for o in self.nodes[n].outputs
                       if o in self.block.outputs or any(u not in nodes for u in self.users(o))]
            fp = self.fused_params.get(key)
            if fp:
                name = fp.name
            else:
                name = group_name(self.block, [self.nodes[n] for n in nodes], used_names)
            used_names.add(name)
            out.append(Group(f"{self.block.name}.g{i}", self.block.name, self.template[key], nodes, name,
                             inputs, outputs, fp, [self.nodes[n] for n in nodes]))
        return out


def fused_name(members: list[str], taken: set[str]) -> str:
    """q_proj, k_proj, v_proj -> qkv_proj; gate_proj, up_proj -> gate_up_proj."""
    parts = [m.split("_") for m in members]
    suffix = []
    while all(len(p) > 1 for p in parts) and len({p[-1] for p in parts}) == 1:
        suffix.insert(0, parts[0][-1])
        parts = [p[:-1] for p in parts]
    heads = ["_".join(p) for p in parts]
    joined = "".join(heads) if all(len(h) == 1 for h in heads) else "_".join(heads)
    name = "_".join([joined, *suffix])
    while name in taken:
        name += "_fused"
    return name


def group_name(block: BlockIR, nodes: list[Node], taken: set[str]) -> str:
    ops = list(dict.fromkeys(n.op for n in nodes))
    if len(nodes) > 1 and len(ops) == 1:
        # horizontal: name by what it is applied to (rope_q_k)
        base = f"{ops[0]}_" + "_".join(block.values[n.outputs[0]].name for n in nodes)
    else:
        base = "_".join(ops)
    name, k = base, 2
    while name in taken or name in NN_MODULE_ATTRS:
        name = f"{base}_{k}"
        k += 1
    return name


def fuse(ir: ModelIR, enabled: bool = True) -> FusionPlan:
    plan = FusionPlan(enabled=enabled)
    if not enabled:
        return plan
    for name, block in ir.blocks.items():
        f = _BlockFusion(ir, block, plan)
        f.projections()
        f.vertical()
        f.horizontal()
        plan.groups[name] = f.groups()
    return plan


def check_contracts(ir: ModelIR, plan: FusionPlan) -> None:
    """`expect_fused: [add+rms_norm, ...]`: each entry must be inside one group somewhere in the model."""
    wanted = ir.spec.data.get("expect_fused") or []
    if not wanted or not plan.enabled:
        return
    formed = []
    for bname, groups in plan.groups.items():
        nodes = {n.id: n for n in ir.blocks[bname].order()}
        for g in groups:
            formed.append([nodes[n].op for n in g.nodes])
    problems = []
    for i, entry in enumerate(wanted):
        ops = entry.split("+")
        if any(all(g.count(o) >= ops.count(o) for o in ops) for g in formed):
            continue
        refused = [f"{d.block}: {d.what}: {d.reason}" for d in plan.decisions
                   if not d.taken and any(f"{o}(" in d.what for o in ops)]
        why = ("; refused: " + " | ".join(refused[:4])) if refused else "; no candidate for it was found"
        problems.append(ir.spec.problem(("expect_fused", i), f"required fusion '{entry}' did not happen{why}"))
    if problems:
        raise SpecError(problems)


def contracted_order(block: BlockIR, plan: FusionPlan | None) -> list:
    """The block's nodes with each group in place of its members (a Group where it starts), topologically."""
    groups = plan.group_of(block.name) if plan else {}
    g = nx.DiGraph()
    unit = {n.id: (groups[n.id].id if n.id in groups else n.id) for n in block.order()}
    index: dict[str, float] = {}
    obj: dict[str, object] = {}
    for n in block.order():
        u = unit[n.id]
        g.add_node(u)
        index[u] = min(index.get(u, n.index), n.index)
        obj[u] = groups[n.id] if n.id in groups else n
    for a, b in block.graph.edges:
        if unit[a] != unit[b]:
            g.add_edge(unit[a], unit[b])
    return [obj[u] for u in nx.lexicographical_topological_sort(g, key=lambda u: index[u])]
