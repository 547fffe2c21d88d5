"""The fusion pass: partition each block's ops into fused groups, from fusion kinds and graph structure.

Nothing here knows a model family. Ops declare a fusion kind in the registry (elementwise,
broadcast, reduction = a row reduction over the last dim, matmul, attention, injective, opaque) and
optionally a Triton lowering; kernel templates declare what they can take (compiler/triton/templates.py
TRAITS). The rules below look only at those, at value shapes and at who reads what. Each rule
separates legality (a reason when refused) from profit (an estimate of memory traffic saved, in
tensor reads/writes), and every decision, taken or refused, is recorded on the IR so
`graphspec compile --explain` can show it.

Rules, applied in this order:
- projection: linears reading the same input become one matmul over concatenated weights; the pass
  adds a `fused_linear` param whose members the loader concatenates at load time.
- chain: a pointwise op joins the group of the pointwise op producing its operand.
- prologue / epilogue: a row reduction absorbs the pointwise group that computes its input (the
  group may still write its values when others read them: residual add + norm writes both), and
  pointwise consumers of its output.
- horizontal: independent ops of a template that batches reading a shared operand (rotary on q and
  k) become one kernel launch.
Groups never create a cycle between groups (checked on the contracted graph). Each group becomes a
region node of its block (compiler/ir.py Region), its members moved inside it.
"""
from __future__ import annotations

import networkx as nx

from compiler.conditions import describe
from compiler.ir import REGION, Block, Decision, ModelIR, Node, Param, Region
from compiler.names import NN_MODULE_ATTRS
from compiler.ops import OPS
from compiler.printer import op_label
from compiler.symbolic import canonical, same_value
from compiler.triton.templates import ROW_REDUCTIONS, SUPPORTS, TRAITS, group_knows_dtype, triton_lowering

POINTWISE = ("elementwise", "broadcast")
PROJECTION = "projection"     # this pass's own group kind: a matmul over concatenated weights


def template_of(node: Node) -> str | None:
    """The kernel template an op can enter, from its fusion kind and Triton lowering alone."""
    op = OPS.get(node.op)
    if op is None:
        return None
    lowering = triton_lowering(op, node)
    if lowering is None:
        return None     # no Triton form, or none for these attribute values (e.g. softcap with a null cap)
    if op.fusion in POINTWISE and "{" in lowering:
        return "pointwise"
    if op.fusion == "reduction":
        return "row_reduction" if lowering in ROW_REDUCTIONS else None
    if lowering in TRAITS and SUPPORTS.get(lowering, lambda n: True)(node):
        return lowering    # a dedicated template: rope, flash_attention
    return None


def passes_through(node: Node) -> bool:
    """The op's Triton form is its one operand unchanged (dropout, which kernels only run in eval)."""
    op = OPS.get(node.op)
    return (op is not None and isinstance(op.triton, str) and op.triton.count("{") == 1
            and op.triton.strip("{}") in op.operands)


def chains(template: str) -> bool:
    """The template takes pointwise prologues and epilogues (pointwise chains, row reductions)."""
    return TRAITS.get(template, {}).get("chains", False)


class _BlockFusion:
    def __init__(self, ir: ModelIR, block: Block):
        self.ir, self.block = ir, block
        self.nodes = {n.id: n for n in block.order()}
        self.group: dict[str, str] = {}          # node id -> group key
        self.members: dict[str, list[str]] = {}  # group key -> node ids
        self.template: dict[str, str] = {}
        self.fused_params: dict[str, Param] = {}
        self.producer = block.producers()
        for nid, node in self.nodes.items():
            t = template_of(node)
            wide = [p for p in node.params.values() if len(block.params[p].dims) > 1 and t == "row_reduction"]
            if wide:
                self.record("kernel", op_label(block, node), False,
                            f"its weight '{wide[0]}' has {len(block.params[wide[0]].dims)} dims; row kernels read one row",
                            ops=[node.op])
                t = None
            if t is not None and node.when:
                # a run-time branch: one kernel cannot both run and skip part of itself
                self.record("kernel", op_label(block, node), False,
                            f"runs under `when: {describe(node.when)}`", ops=[node.op])
                t = None
            if t is not None and chains(t):
                out = self.shape(node.outputs[0])
                odd = [v for v in node.inputs.values() if not self.same_shape(self.shape(v), out)]
                ints = [v for v in [*node.inputs.values(), *node.outputs] if block.values[v].type.dtype == "int"]
                if odd:
                    self.record("kernel", op_label(block, node), False,
                                f"operand '{block.values[odd[0]].name}' is broadcast; kernels read full rows", ops=[node.op])
                    t = None
                elif ints:
                    self.record("kernel", op_label(block, node), False,
                                f"'{block.values[ints[0]].name}' is an int tensor; kernels compute in fp32, which "
                                "would round large integers", ops=[node.op])
                    t = None
            if t is not None:
                self.group[nid] = nid
                self.members[nid] = [nid]
                self.template[nid] = t

    def record(self, rule, what, taken, reason, score=0, ops=()):
        decision = Decision(self.block.name, rule, what, taken, reason, score, tuple(ops))
        # Two ops joined by two values (rope_table's cos and sin into the layers) are one decision.
        if decision not in self.ir.decisions:
            self.ir.decisions.append(decision)

    # -- helpers --------------------------------------------------------------------------------
    def users(self, vid: str) -> list[str]:
        return [n.id for n in self.nodes.values() if vid in n.reads]

    def acyclic_with(self, nodes: set[str]) -> bool:
        """Contracting `nodes` into one unit, with the groups formed so far contracted too, keeps a DAG."""
        unit = {n: ("new" if n in nodes else self.group.get(n, n)) for n in self.nodes}
        q = nx.DiGraph()
        q.add_nodes_from(set(unit.values()))
        q.add_edges_from((unit[a], unit[b]) for a, b, _ in self.block.graph.edges if unit[a] != unit[b])
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
        if "row_reduction" in (ta, tb):     # a pointwise prologue or epilogue joins the reduction
            self.template[a] = "row_reduction"
        return a

    # -- rule: projection -------------------------------------------------------------------------
    def projections(self) -> None:
        by_input: dict[str, list[Node]] = {}
        for node in self.nodes.values():
            op = OPS.get(node.op)
            if op is not None and op.fusion == "matmul" and set(node.params) == {"w"} and not node.when:
                by_input.setdefault(node.inputs["x"], []).append(node)
        for vid, nodes in by_input.items():
            if len(nodes) < 2:
                continue
            ok = []
            for node in nodes:
                reason = self.projection_refusal(node, nodes[0])
                if reason:
                    self.record("projection", op_label(self.block, node), False, reason, ops=[node.op])
                else:
                    ok.append(node)
            if len(ok) < 2:
                continue
            names = [n.params["w"] for n in ok]
            first = self.block.params[names[0]]
            taken = set(self.block.params) | {p.name for p in self.fused_params.values()}
            fp = Param(fused_name(names, taken), "fused_linear", {"in": first.dims["in"]},
                       {"bias": first.options.get("bias")}, first.loc, members=names, quant=first.quant)
            key = f"proj:{fp.name}"
            for n in ok:
                self.group[n.id] = key
            self.members[key] = [n.id for n in ok]
            self.template[key] = PROJECTION
            self.fused_params[key] = fp
            score = len(ok) - 1
            self.record("projection", " + ".join(op_label(self.block, n) for n in ok), True,
                        f"one matmul reading '{self.block.values[vid].name}' once; weights {fp.name} = "
                        f"concat({', '.join(names)}) at load time", score, [n.op for n in ok])

    def projection_refusal(self, node: Node, first: Node) -> str | None:
        p = self.block.params[node.params["w"]]
        p0 = self.block.params[first.params["w"]]
        if p.tied_to:
            return f"'{p.name}' is tied to '{p.tied_to}': its storage cannot be concatenated"
        if p.when != p0.when:
            return f"'{p.name}' exists under other conditions than '{p0.name}'"
        if p.quant != p0.quant:
            return (f"'{p.name}' is {'quantized as ' + p.quant if p.quant else 'kept in float'}, '{p0.name}' "
                    f"{'quantized as ' + p0.quant if p0.quant else 'kept in float'}: one matmul holds one format")
        if any(q.tied_to == p.name for q in self.block.params.values()):
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
            if n.when:
                return f"'{n.op}' runs under `when: {describe(n.when)}`"
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
        if PROJECTION in (tp, tc):
            return "a fused projection is a matmul; its epilogue is not fused (no GEMM template)"
        if not chains(tp) or not chains(tc):
            t = tp if not chains(tp) else tc
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
            what = f"{op_label(self.block, self.nodes[prod])} -> {op_label(self.block, self.nodes[cons])}"
            ops = (self.nodes[prod].op, self.nodes[cons].op)
            reason = self.edge_refusal(prod, cons, vid)
            if reason:
                self.record("vertical", what, False, reason, ops=ops)
                continue
            gp, gc = self.group[prod], self.group[cons]
            if gp == gc:
                continue
            kind = ("prologue" if self.template[gc] == "row_reduction" and self.template[gp] == "pointwise" else
                    "epilogue" if self.template[gp] == "row_reduction" else "chain")
            self.merge(gp, gc)
            keep = " (still written: read elsewhere)" if score == 1 else " (never written)"
            self.record("vertical", what, True, f"{kind}: '{self.block.values[vid].name}' stays in registers{keep}",
                        score, ops)

    # -- rule: horizontal ---------------------------------------------------------------------
    def horizontal(self) -> None:
        singles = [k for k, t in self.template.items()
                   if TRAITS.get(t, {}).get("horizontal") and len(self.members[k]) == 1]
        for i, a in enumerate(singles):
            if a not in self.members:
                continue
            for b in singles[i + 1:]:
                if b not in self.members or a not in self.members:
                    continue
                na, nb = self.nodes[self.members[a][-1]], self.nodes[b]
                if na.op != nb.op:
                    continue
                what = f"{op_label(self.block, na)} | {op_label(self.block, nb)}"
                shared = set(na.inputs.values()) & set(nb.inputs.values())
                if not shared:
                    self.record("horizontal", what, False, "no operand in common", ops=(na.op, nb.op))
                    continue
                if not self.acyclic_with(set(self.members[a]) | {b}):
                    self.record("horizontal", what, False, "one depends on the other", ops=(na.op, nb.op))
                    continue
                self.merge(a, b)
                names = ", ".join(self.block.values[v].name for v in sorted(shared))
                self.record("horizontal", what, True, f"one launch, shared operand(s) {names} read once", len(shared),
                            (na.op, nb.op))

    # -- regions --------------------------------------------------------------------------------
    def contract(self) -> None:
        """Each group becomes one region node in place of its members; a projection's fused param
        joins the block's params, its members marked as fused into it."""
        block = self.block
        taken = set(block.params) | {p.name for p in self.fused_params.values()}
        keys = sorted(self.members, key=lambda k: min(self.nodes[n].index for n in self.members[k]))
        for key in keys:
            nodes = [self.nodes[n] for n in self.members[key]]
            if key not in self.fused_params and all(passes_through(n) for n in nodes):
                self.record("kernel", op_label(block, nodes[0]), False,
                            "its kernel would only copy its input (dropout outside training): it runs in place",
                            ops=[n.op for n in nodes])
                continue
            ids = set(self.members[key])
            inside = {o for n in nodes for o in n.outputs}
            inputs = list(dict.fromkeys(v for n in nodes for v in n.inputs.values() if v not in inside))
            # a value reported besides the outputs (the last hidden state) is written like an output
            outputs = [o for n in nodes for o in n.outputs
                       if o in block.outputs or o == block.last_hidden or any(u not in ids for u in self.users(o))]
            if chains(self.template[key]) and not group_knows_dtype(
                    OPS, nodes, [block.values[v].type.dtype for v in inputs],
                    [block.values[v].type.dtype for v in outputs]):
                # the members stay ordinary ops, run by PyTorch
                self.record("kernel", " + ".join(op_label(block, n) for n in nodes), False,
                            "no float value enters it: a kernel takes the model's dtype from a float input",
                            ops=[n.op for n in nodes])
                continue
            fp = self.fused_params.get(key)
            floats = [v for v in inputs if block.values[v].type.dtype == "float"]
            if fp is None and not floats and any(block.values[o].type.dtype == "float" for o in outputs):
                # kernels allocate the model's dtype like a float input (a lone cast of an fp32 value back)
                self.record("kernel", " + ".join(op_label(block, n) for n in nodes), False,
                            "its result is in the model's dtype but no input is, so a kernel has no dtype to "
                            "allocate it in", ops=[n.op for n in nodes])
                continue
            if fp is not None:
                block.params[fp.name] = fp
                for m in fp.members:
                    block.params[m].fused_into = fp.name
                name = fp.name
            else:
                name = group_name(block, nodes, taken)
            taken.add(name)
            region = Region(name, self.template[key], nodes, inputs, outputs, fp.name if fp else None)
            for n in nodes:
                block.remove(n.id)
            block.add(Node(block.fresh_node_id(f"g.{name}"), REGION, {v: v for v in inputs}, {}, {}, list(outputs),
                           nodes[0].loc, min(n.index for n in nodes), region=region))


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
    while name in taken or name in NN_MODULE_ATTRS:
        name += "_fused"
    return name


def group_name(block: Block, nodes: list[Node], taken: set[str]) -> str:
    ops = list(dict.fromkeys(n.op for n in nodes))
    if len(nodes) > 1 and len(ops) == 1:
        # horizontal: name by what it is applied to (rope_q_k)
        base = f"{ops[0]}_" + "_".join(block.values[n.outputs[0]].name for n in nodes)
    else:
        base = "_".join(ops)
    name, k = base, 2
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    return name


def fuse(ir: ModelIR) -> None:
    """The fusion pass: every block's fused groups become region nodes; decisions go to ir.decisions."""
    for block in ir.blocks.values():
        f = _BlockFusion(ir, block)
        f.projections()
        f.vertical()
        f.horizontal()
        f.contract()
    ir.fused = True
