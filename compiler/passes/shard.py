"""The shard pass: a tensor-parallel plan derived from the IR (on with `--tp N`), for any spec.

Every tensor dim of the model is a slot: a dim of a value in a block, or a dim of a param. Ops join
slots into axes through what they declare (`OpDef.parallel`, compiler/ops/registry.py: dims they are
independent along, a param dim their output carries or one they sum over or pick rows of, operands
holding grouped slices) or what their fusion kind implies (pointwise ops broadcast, row reductions
keep every dim but the last); calls and repeats join a block's inputs and outputs to their
arguments, ties join the dims of the tensors they share. A slot an op needs whole (the dim a norm
reduces over, a rotary embedding's head dim, a model input, anything of an op with no parallel form)
keeps its axis whole, and says why.

An axis holding param dims is split across the ranks, each rank holding a contiguous share, when it
is not kept whole and its ends cost at most one collective each:
- summed over by an op (a linear's input features: row-parallel) -> `all_reduce` after that op;
- rows picked by ids (an embedding) -> the lookup over this rank's rows, then `all_reduce`; only for
  the vocabulary (rows as many as the generated logits' last dim): a small table (positions, buckets)
  costs less replicated than the all-reduce;
- reaching the model output generation reads (the LM head's logits: vocab-parallel) -> `all_gather`;
  reaching any other model output keeps it whole.
An op computing a dim from no operand (ALiBi slopes) declares it a share: the pass sets the attributes
counting its slices and naming the first to this rank's, so a rank computes its own heads' slopes.
Axes that begin at a projection's output (q/k/v, gate/up, a fused qkv split by weight rules) and end
where another sums them back (o_proj, down_proj) are thus column- then row-parallel, Megatron's
layout. An operand holding grouped slices (grouped-query attention's key/value heads) follows the
axis it serves: each rank keeps the slices its share of the other needs, all of them when there are
fewer than ranks. A param is split along one dim at most; biases of a row-parallel param are held by
rank 0 (zeros elsewhere), so the all-reduce adds them once.

An axis is counted in units (its smallest member: heads for [H * D] dims), split by ceil-sized
chunks of units; an axis holding a count attribute (split_heads `heads`) and its followers must
divide evenly, which config checks say at load time with the numbers (`num_heads % tp_size == 0`).
The split itself is config entries the pass adds (`tp_size`, `tp_rank`, and per axis `local_X`,
`local_X_start`), so model.py reads `cfg.local_num_heads` where it read `cfg.num_heads`; the runtime
sets tp_size and tp_rank from its process group. Sizes of every split slot, count attributes and
params are rewritten to the local ones, so later passes and `verify` see a consistent IR.

Mixture-of-experts (no experts op exists yet): an experts op declares its stacked experts dim
`gathered` by its routing operand, with a `split_rows` op taking the first expert a rank holds; each
rank then runs its experts on the tokens routed to them and the all-reduce after the op adds the
ranks' contributions. The vocabulary test above is for tables looked up by token; experts will need
their own entry in `own_reason` (always worth splitting), nothing else here changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from networkx.utils import UnionFind

from compiler.ir import STRUCTURAL, Block, ModelIR, Node, Param
from compiler.ops import OPS
from compiler.ops.params import PARAM_KINDS
from compiler.ops.registry import Dims, InferCtx, Parallel, TType
from compiler.parallel import Collective, ParallelPlan, SplitTensor
from compiler.printer import op_label
from compiler.spec import Check, ConfigEntry
from compiler.symbolic import canonical, same_value
from compiler.weight_rules import model_tensors
from runtime.expr import Expr, parse_expr
from runtime.rules import template_regex, transform_name

POINTWISE = ("elementwise", "broadcast")
SLICEABLE = ("transpose", "permute", "split", "concat", "stack")   # weight-rule transforms a slice reads through


def shard(ir: ModelIR) -> None:
    _Sharding(ir).run()


def layout(p: Param) -> dict[str, tuple[str, ...]]:
    """Each tensor of a param with its dims named as the param kind names them: linear weight ('out', 'in')."""
    kind = PARAM_KINDS[p.kind]
    # the param's own options: they may size a tensor (a grouped convolution's input channels)
    names = {**{k: k for k in p.dims}, **p.options}
    return {tensor: tuple(shape) for tensor, shape, _ in kind.tensors(names)}


@lru_cache(maxsize=4096)
def _simplify(e: Expr | str) -> Expr:
    text = canonical(parse_expr(e))
    return parse_expr(e) if text.startswith("<") else parse_expr(text)


_regex = lru_cache(maxsize=1024)(template_regex)


@lru_cache(maxsize=4096)
def _divides(unit: Expr, size: Expr) -> bool:
    return same_value(parse_expr(f"(({size}) // ({unit})) * ({unit})"), size)


@dataclass
class _Axis:
    slots: list = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    contracted: list[tuple] = field(default_factory=list)   # (block, node, param slot)
    gathered: list[tuple] = field(default_factory=list)     # (block, node, param slot)
    outputs: list[tuple] = field(default_factory=list)      # (output value id, dim)
    units: list[tuple] = field(default_factory=list)        # (block, node, attribute, output dim)
    firsts: list[tuple] = field(default_factory=list)       # (block, node, attribute, output dim): its first slice
    leaders: set = field(default_factory=set)               # as a grouped operand: the axes it serves
    follows: list[tuple] = field(default_factory=list)      # (block, node) where it is grouped
    unit: Expr | None = None
    local: str | None = None                                # config names: its share, its first unit
    start: str | None = None
    leader: "_Axis | None" = None                           # split as grouped slices: the axis they serve


class _Sharding:
    def __init__(self, ir: ModelIR):
        self.ir = ir
        self.sets = UnionFind()              # slots joined into axes
        self.facts: list[tuple] = []         # (kind, slot, data) gathered while joining
        self.relation: dict = {}             # param slot -> "out" | "contracted" | "gathered"
        self.shares: dict = {}               # (unit, leader's unit) -> (local, start) config names

    # -- slots and their union ---------------------------------------------------------------------
    def find(self, s):
        return self.sets[s]

    def union(self, a, b) -> None:
        self.sets.union(a, b)

    def value_slots(self, block: Block, vid: str) -> list[tuple]:
        return [("v", block.name, vid, d) for d in range(len(block.values[vid].type.shape))]

    def size(self, slot) -> Expr:
        kind, b, name, d = slot
        block = self.ir.blocks[b]
        return block.values[name].type.shape[d] if kind == "v" else parse_expr(block.params[name].dims[d])

    def describe(self, slot) -> str:
        kind, b, name, d = slot
        block = self.ir.blocks[b]
        return f"dim {d} of '{block.values[name].name}' in {b}" if kind == "v" else f"'{name}.{d}' in {b}"

    def block_slot(self, slot, why: str) -> None:
        self.find(slot)
        self.facts.append(("blocked", slot, why))

    # -- joining -----------------------------------------------------------------------------------
    def join(self) -> None:
        ir = self.ir
        for block in ir.trunk():
            for p in block.params.values():
                if p.kind in PARAM_KINDS:
                    for d in p.dims:
                        self.find(("p", block.name, p.name, d))
                    target = block.params.get(p.tied_to) if p.tied_to else None
                    if target is not None and target.kind in PARAM_KINDS:
                        for a, b in zip(layout(p)["weight"], layout(target)["weight"]):
                            self.union(("p", block.name, p.name, a), ("p", block.name, target.name, b))
            for node in block.order():
                if node.op in STRUCTURAL:
                    self.join_call(block, node)
                else:
                    self.join_op(block, node)
        model = ir.model
        for vid in model.inputs:
            for s in self.value_slots(model, vid):
                self.block_slot(s, f"model input '{model.values[vid].name}'")
        for vid in model.outputs:
            for s in self.value_slots(model, vid):
                self.find(s)
                self.facts.append(("output", s, (vid, s[3])))

    def join_call(self, block: Block, node: Node) -> None:
        callee = self.ir.callee(block, node)
        by_name = {callee.values[i].name: i for i in callee.inputs}
        for name, vid in node.inputs.items():
            for a, b in zip(self.value_slots(block, vid), self.value_slots(callee, by_name[name])):
                self.union(a, b)
        for vid, out in zip(node.outputs, callee.outputs):
            for a, b in zip(self.value_slots(block, vid), self.value_slots(callee, out)):
                self.union(a, b)
            if node.op == "repeat":    # a layer's output is the next layer's input of the same name
                for a, b in zip(self.value_slots(callee, out), self.value_slots(callee, by_name[callee.values[out].name])):
                    self.union(a, b)

    def parallel(self, block: Block, node: Node) -> Parallel | None:
        op = OPS[node.op]
        ranks = {f: len(block.values[v].type.shape) for f, v in node.inputs.items()}
        if op.parallel is not None:
            return op.declared_parallel(ranks, node.attrs)
        if len(node.outputs) != 1:
            return None
        rank = len(block.values[node.outputs[0]].type.shape)
        if op.fusion in POINTWISE:      # torch broadcasting: dims line up from the right
            dims = {}
            for f, vid in node.inputs.items():
                shape = block.values[vid].type.shape
                dims[f] = {d: rank - len(shape) + d for d, size in enumerate(shape)
                           if not (size.is_constant() and size.evaluate({}) == 1)}
            return Parallel(dims=dims)
        if op.fusion == "reduction":    # over the last dim
            return Parallel(dims={f: {d: d for d in range(r - 1)} for f, r in ranks.items()})
        return None

    def join_op(self, block: Block, node: Node) -> None:
        par = self.parallel(block, node)
        label = f"{op_label(block, node)} ({node.loc})"
        operand_slots = {(f, d): s for f, v in node.inputs.items() for d, s in enumerate(self.value_slots(block, v))}
        param_slots = {(f, d): ("p", block.name, p, d) for f, p in node.params.items() for d in block.params[p].dims}
        out_slots = [s for o in node.outputs for s in self.value_slots(block, o)]
        if par is None or len(node.outputs) != 1:
            for s in [*operand_slots.values(), *param_slots.values(), *out_slots]:
                self.block_slot(s, f"{label} has no parallel form")
            return
        rank = len(out_slots)
        covered = set()
        for f, mapping in par.dims.items():
            if f not in node.inputs:
                continue
            r = len(block.values[node.inputs[f]].type.shape)
            grouped = {g % r for g in par.grouped.get(f, ())}
            for d, o in mapping.items():
                a, b = operand_slots[(f, d % r)], out_slots[o % rank]
                if d % r in grouped:
                    self.find(a)
                    self.facts.append(("follows", a, (b, block.name, node.id)))
                else:
                    self.union(a, b)
                covered |= {a, b}
        for (f, d), o in par.param_out.items():
            p = param_slots[(f, d)]
            self.union(p, out_slots[o % rank])
            self.relation[p] = "out"
            covered |= {p, out_slots[o % rank]}
        for (f, d), (operand, od) in par.contracted.items():
            p = param_slots[(f, d)]
            a = operand_slots[(operand, od % len(block.values[node.inputs[operand]].type.shape))]
            self.union(p, a)
            self.relation[p] = "contracted"
            self.facts.append(("contracted", p, (block.name, node.id)))
            covered |= {p, a}
        for (f, d), _ids in par.gathered.items():
            p = param_slots[(f, d)]
            self.find(p)
            self.relation[p] = "gathered"
            self.facts.append(("gathered", p, (block.name, node.id)))
            covered.add(p)
        for o, (count, first) in par.shares.items():
            s = out_slots[o % rank]
            self.find(s)
            self.facts.append(("units", s, (block.name, node.id, count, o % rank)))
            self.facts.append(("first", s, (block.name, node.id, first, o % rank)))
            covered.add(s)
        for o, attr in par.units.items():
            self.facts.append(("units", out_slots[o % rank], (block.name, node.id, attr, o % rank)))
        for (f, d), s in operand_slots.items():
            if s not in covered:
                self.block_slot(s, f"{label} needs dim {d} of '{block.values[node.inputs[f]].name}' whole")
        for (f, d), s in param_slots.items():
            if s not in covered:
                self.block_slot(s, f"{label} reads it whole")
        for o, s in enumerate(out_slots):
            if s not in covered:
                self.block_slot(s, f"{label} makes its dim {o} whole")

    # -- axes and decisions --------------------------------------------------------------------------
    def axes(self) -> dict:
        axes: dict = {}
        for s in list(self.sets):
            axes.setdefault(self.find(s), _Axis()).slots.append(s)
        for kind, slot, data in self.facts:
            axis = axes[self.find(slot)]
            if kind == "blocked":
                axis.blocked.append(data)
            elif kind == "contracted":
                axis.contracted.append((*data, slot))
            elif kind == "gathered":
                axis.gathered.append((*data, slot))
            elif kind == "output":
                axis.outputs.append(data)
            elif kind == "units":
                axis.units.append(data)
            elif kind == "first":
                axis.firsts.append(data)
            elif kind == "follows":
                leader, b, nid = data
                if self.find(leader) == self.find(slot):
                    # the slices serve their own axis (k, v and q cut from one fused projection's
                    # heads): as many as they serve, so nothing is grouped
                    continue
                axis.leaders.add(self.find(leader))
                axis.follows.append((b, nid))
        return axes

    def vocabulary(self):
        """(the generated logits' value id, its last dim's size), or None without generation."""
        g = self.ir.contract.generate if self.ir.contract is not None else None
        model = self.ir.model
        vid = next((v for v in model.outputs if g and model.values[v].name == g["logits"]), None)
        if vid is None or not model.values[vid].type.shape:
            return None
        return vid, model.values[vid].type.shape[-1]

    def own_reason(self, axis: _Axis, vocab) -> str | None:
        """Why this axis stays whole on its own account, or None."""
        if axis.blocked:
            return axis.blocked[0]
        logits = vocab[0] if vocab else None
        for vid, d in axis.outputs:
            model = self.ir.model
            if vid != logits or d != len(model.values[vid].type.shape) - 1:
                return f"reaches the model output '{model.values[vid].name}', which would need an all-gather"
        for b, nid, p in axis.gathered:
            if vocab is None or not same_value(self.size(p), vocab[1]):
                node = self.ir.blocks[b].node(nid)
                return (f"{op_label(self.ir.blocks[b], node)} ({node.loc}) picks rows of a table that is not the "
                        "vocabulary of generated logits: replicated, a lookup costs less than the all-reduce a split adds")
        for slot in (s for s in axis.slots if s[0] == "p"):
            for rule in self.rules_of(slot):
                names = [transform_name(t)[0] for t in rule.transforms]
                if any(n not in SLICEABLE for n in names):
                    return f"its weight rule from '{rule.sources[0]}' transforms it ({', '.join(names)}) in a way no slice reads through"
        sizes = list({str(e): e for e in (self.size(s) for s in axis.slots)}.values())
        unit = next((u for u in sorted(sizes, key=lambda e: len(str(e))) if all(_divides(u, s) for s in sizes)), None)
        if unit is None:
            return f"its members ({', '.join(sorted(str(e) for e in sizes))}) have no common unit to split by"
        axis.unit = unit
        if axis.follows and (axis.contracted or axis.gathered or axis.outputs):
            return "grouped slices may be held by several ranks, so nothing may sum or gather them"
        return None

    def rules_of(self, param_slot) -> list:
        _, b, pname, _ = param_slot
        names = [t.name for t in self.tensors if t.block == b and t.param == pname]
        return [r for r in self.ir.weights if r.ignore is None
                and any(_regex(target).match(n) for target in r.targets for n in names)]

    def decide(self, axes: dict, vocab) -> dict:
        """root -> None (split) or the reason it stays whole, for every axis holding a param dim."""
        with_params = [r for r, a in axes.items() if any(s[0] == "p" for s in a.slots)]
        status = {r: self.own_reason(axes[r], vocab) for r in with_params}
        for r, a in axes.items():
            if a.leaders and r not in status:
                status[r] = self.own_reason(a, vocab)
        order = sorted(status, key=lambda r: self.slot_order.get(r, len(self.slot_order)))
        changed = True
        while changed:
            changed = False
            for r in order:
                a = axes[r]
                if not a.leaders:
                    continue
                if len(a.leaders) > 1 and status[r] is None:
                    status[r] = "grouped slices serving several axes"
                    changed = True
                for leader in a.leaders:
                    if status.get(leader, "") is None and status[r] is not None:
                        status[leader] = f"its grouped slices ({self.describe(a.slots[0])}) stay whole: {status[r]}"
                        changed = True
            held: dict = {}
            for r in order:
                if status[r] is not None or not self.effective(axes, status, r):
                    continue
                for s in axes[r].slots:
                    if s[0] != "p":
                        continue
                    key = s[1:3]
                    if key in held and held[key] != r:
                        first = next(x for x in axes[held[key]].slots if x[0] == "p" and x[1:3] == key)
                        status[r] = f"'{key[1]}' is already split on its dim '{first[3]}'"
                        changed = True
                        break
                    held[key] = r
        for r, a in axes.items():
            if a.leaders and r in status and status[r] is None and not self.effective(axes, status, r):
                leader = next(iter(a.leaders))
                status[r] = f"it serves {self.describe(axes[leader].slots[0])}, which stays whole"
        return status

    @staticmethod
    def effective(axes, status, root) -> bool:
        """Split: its own account allows it and, for grouped slices, the axis they serve is split."""
        a = axes[root]
        return status.get(root) is None and all(status.get(l, "") is None for l in a.leaders)

    # -- the plan ------------------------------------------------------------------------------------
    def run(self) -> None:
        ir = self.ir
        self.tensors = model_tensors(ir)
        self.join()
        self.slot_order = {}
        for block in ir.trunk():
            for p in block.params.values():
                for d in p.dims if p.kind in PARAM_KINDS else ():
                    self.slot_order.setdefault(self.find(("p", block.name, p.name, d)), len(self.slot_order))
        axes = self.axes()
        vocab = self.vocabulary()
        status = self.decide(axes, vocab)
        split = [r for r in status if status[r] is None and self.effective(axes, status, r)]
        plan = ParallelPlan(self.fresh_config("tp_size"), "")
        plan.rank = self.fresh_config("tp_rank")
        self.plan = plan
        self.add_config(plan.size, "1", "tensor parallelism: the number of ranks (set by the runtime)")
        self.add_config(plan.rank, "0", "tensor parallelism: this process's rank (set by the runtime)")
        self.add_check(f"{plan.size} >= 1 and {plan.rank} >= 0 and {plan.rank} < {plan.size}",
                       f"tensor parallelism: the rank must lie in 0..{plan.size} - 1")
        leaders = sorted((r for r in split if not axes[r].leaders), key=self.slot_order.get)
        followers = sorted((r for r in split if axes[r].leaders), key=self.slot_order.get)
        led = {leader for r in followers for leader in axes[r].leaders}
        for r in leaders + followers:
            self.name_shares(axes, r, led)
        self.record_tensors(axes, status, split)
        originals = {s: self.size(s) for r in split for s in axes[r].slots}
        for r in split:
            self.rewrite(axes[r], originals)
        for r in split:
            self.insert_collectives(axes[r], originals)
        blocks = list(ir.blocks)
        plan.collectives.sort(key=lambda c: (blocks.index(c.block), c.index))
        ir.parallel = plan

    def fresh_config(self, name: str) -> str:
        k, candidate = 2, name
        while candidate in self.ir.config:
            candidate, k = f"{name}_{k}", k + 1
        return candidate

    def add_config(self, name: str, default: str, doc: str) -> None:
        self.ir.config[name] = ConfigEntry(name, [], "int", parse_expr(default), True, (), doc)
        self.plan.config.append(name)

    def add_check(self, that: str, message: str) -> None:
        check = Check(parse_expr(that), message, ())
        if all(str(c.that) != str(check.that) for c in self.ir.checks):
            self.ir.checks.append(check)
            self.plan.checks.append(check)

    def base_name(self, axis: _Axis) -> str:
        if axis.unit.kind == "name":
            return axis.unit.value
        first = next(s for s in axis.slots if s[0] == "p")
        return f"{first[2]}_{first[3]}"

    def name_shares(self, axes: dict, root, led: set) -> None:
        """Config entries for this rank's share of the axis's units (how many, and the first), and the
        checks that the share is whole: every rank as many heads, the grouped slices its heads need."""
        axis = axes[root]
        leader = axes[next(iter(axis.leaders))] if axis.leaders else None
        axis.leader = leader
        if leader is None:
            self.leader_shares(axis)
            if axis.units or root in led:
                self.check_even(axis)
            return
        if same_value(leader.unit, axis.unit):
            axis.local, axis.start = leader.local, leader.start
            return
        self.follower_shares(axis, leader)

    def shares_for(self, axis: _Axis, leader: _Axis | None) -> bool:
        """Names for the axis's share, shared with every axis counted in the same units; False when
        they exist already."""
        key = (canonical(axis.unit), canonical(leader.unit) if leader is not None else None)
        if key in self.shares:
            axis.local, axis.start = self.shares[key]
            return False
        base = self.base_name(axis)
        axis.local, axis.start = self.fresh_config(f"local_{base}"), self.fresh_config(f"local_{base}_start")
        self.shares[key] = (axis.local, axis.start)
        return True

    def leader_shares(self, axis: _Axis) -> None:
        """Ceil-sized chunks of the units, in rank order (the last ranks may hold fewer)."""
        if not self.shares_for(axis, None):
            return
        size, rank, unit = self.plan.size, self.plan.rank, axis.unit
        chunk = f"(({unit}) + {size} - 1) // {size}"
        self.add_config(axis.start, f"min({unit}, {rank} * ({chunk}))", f"tensor parallelism: this rank's first unit of {unit}")
        self.add_config(axis.local, f"min({unit}, ({rank} + 1) * ({chunk})) - {axis.start}",
                        f"tensor parallelism: this rank's share of {unit}")

    def check_even(self, axis: _Axis) -> None:
        size, unit = self.plan.size, axis.unit
        if axis.units:
            b, nid, attr, _ = axis.units[0]
            node = self.ir.blocks[b].node(nid)
            what = f"the {attr} of {op_label(self.ir.blocks[b], node)}, {node.loc}"
        else:
            what = "grouped slices follow it"
        self.add_check(f"({unit}) % {size} == 0",
                       f"tensor parallelism splits {unit} ({what}) evenly: it must be a multiple of {size}, the number of ranks")

    def follower_shares(self, axis: _Axis, leader: _Axis) -> None:
        """The units of grouped slices that this rank's share of the leader's units reads: unit j serves
        the leader's units j * L / K .. (j + 1) * L / K - 1."""
        size, unit, lu = self.plan.size, axis.unit, leader.unit
        if self.shares_for(axis, leader):
            self.add_config(axis.start, f"{leader.start} * ({unit}) // ({lu})",
                            f"tensor parallelism: this rank's first unit of {unit} (grouped by {lu})")
            self.add_config(axis.local, f"(({leader.start} + {leader.local}) * ({unit}) + ({lu}) - 1) // ({lu}) - {axis.start}",
                            f"tensor parallelism: the units of {unit} this rank's share of {lu} needs")
        b, nid = axis.follows[0]
        node = self.ir.blocks[b].node(nid)
        self.add_check(f"({unit}) % {size} == 0 or {size} % ({unit}) == 0",
                       f"tensor parallelism: {unit} (grouped in {op_label(self.ir.blocks[b], node)}, {node.loc}) and "
                       f"{size}, the number of ranks, must divide one another: each rank keeps the {unit} its share "
                       f"of {lu} needs")

    def local_size(self, axis: _Axis, full: Expr) -> Expr:
        return _simplify(f"{axis.local} * (({full}) // ({axis.unit}))")

    def record_tensors(self, axes: dict, status: dict, split: list) -> None:
        plan = self.plan
        where = {s: r for r in split for s in axes[r].slots if s[0] == "p"}
        for t in self.tensors:
            if t.head is not None:
                plan.replicated.setdefault(t.name, "task heads run replicated")
                continue
            p = self.ir.blocks[t.block].params[t.param]
            dims = layout(p)[t.name.rsplit(".", 1)[1]]
            slot = next((("p", t.block, t.param, d) for d in p.dims if ("p", t.block, t.param, d) in where), None)
            if slot is None:
                reasons = {}
                for d in dims:
                    r = self.find(("p", t.block, t.param, d))
                    reasons[d] = status.get(r) or f"it serves {self.describe(axes[next(iter(axes[r].leaders))].slots[0])}, which stays whole"
                same = len(set(reasons.values())) == 1
                plan.replicated[t.name] = (next(iter(reasons.values())) if same
                                           else "; ".join(f"{d}: {why}" for d, why in reasons.items()))
                continue
            axis = axes[where[slot]]
            if slot[3] in dims:
                full = self.size(slot)
                unit = _simplify(f"({full}) // ({axis.unit})")
                plan.split.append(SplitTensor(t.name, dims.index(slot[3]), _simplify(f"{axis.start} * ({unit})"),
                                              _simplify(f"{axis.local} * ({unit})"), self.how(axis, slot, unit)))
            elif self.relation.get(slot) in ("contracted", "gathered"):
                plan.rank0[t.name] = f"'{t.param}' is split on '{slot[3]}' into partial sums: rank 0 adds it once"
            else:
                plan.replicated[t.name] = f"'{t.param}' is split on '{slot[3]}', which this tensor does not have"

    def how(self, axis: _Axis, slot, unit: Expr) -> str:
        relation = self.relation.get(slot)
        if relation == "contracted":
            kind = "row-parallel: its input features, partial sums all-reduced"
        elif relation == "gathered":
            kind = "vocab-parallel rows: a lookup finds its row on one rank, all-reduced"
        elif axis.outputs:
            kind = "vocab-parallel: logits all-gathered"
        else:
            kind = "column-parallel"
        units = f"{axis.unit}" + ("" if same_value(unit, parse_expr(1)) else f" units of {unit}")
        share = f"{axis.local} per rank"
        if axis.leader is not None:
            share += f": those its share of {axis.leader.unit} needs"
        return f"{kind}; {units}, {share}"

    def rewrite(self, axis: _Axis, originals: dict) -> None:
        """Every slot of a split axis takes this rank's size; count attributes their share."""
        for s in axis.slots:
            kind, b, name, d = s
            block = self.ir.blocks[b]
            new = self.local_size(axis, originals[s])
            if kind == "p":
                block.params[name].dims[d] = new
            else:
                t = block.values[name].type
                block.values[name].type = TType(t.shape[:d] + (new,) + t.shape[d + 1:], t.dtype)
        for b, nid, attr, o in axis.units:
            node = self.ir.blocks[b].node(nid)
            value = node.attrs[attr]
            if isinstance(value, Dims):    # a list of sizes: the entry of the split output dim
                entries = list(value.args)
                entries[o] = self.local_size(axis, entries[o])
                node.attrs[attr] = Dims(entries)
            else:
                node.attrs[attr] = parse_expr(axis.local)
        for b, nid, attr, o in axis.firsts:
            node = self.ir.blocks[b].node(nid)
            full = originals[("v", b, node.outputs[0], o)]
            node.attrs[attr] = _simplify(f"{axis.start} * (({full}) // ({axis.unit}))")

    def insert_collectives(self, axis: _Axis, originals: dict) -> None:
        for b, nid, slot in axis.contracted:
            block = self.ir.blocks[b]
            node = block.node(nid)
            self.after(block, node, "all_reduce", {},
                       f"row-parallel '{slot[2]}': each rank holds a partial sum")
        for b, nid, slot in axis.gathered:
            block = self.ir.blocks[b]
            node = block.node(nid)
            node.op = self.split_rows(block, node)
            node.attrs = {"start": parse_expr(axis.start)}
            self.after(block, node, "all_reduce", {},
                       f"vocab-parallel '{slot[2]}': the rank holding a token's row gives it, the others zeros")
        for vid, d in axis.outputs:
            model = self.ir.model
            node = model.node(model.producers()[vid])
            self.after(model, node, "all_gather", {"dim": parse_expr(d), "size": originals[("v", "model", vid, d)]},
                       "vocab-parallel logits: each rank computed its share of the vocabulary", value=vid)

    def split_rows(self, block: Block, node: Node) -> str:
        ranks = {f: len(block.values[v].type.shape) for f, v in node.inputs.items()}
        par = OPS[node.op].parallel
        par = par(ranks, node.attrs) if callable(par) else par
        return par.split_rows

    def after(self, block: Block, node: Node, op: str, attrs: dict, why: str, value: str | None = None) -> None:
        """`op` on the node's output, right after it: every later reader and the block's outputs read its result."""
        vid = value or node.outputs[0]
        old = block.values[vid]
        out_type = OPS[op].infer(InferCtx(OPS[op], {"x": old.type}, attrs, {}))[0]
        new = block.fresh_value(old.name, out_type)
        readers = block.users(vid)
        collective = Node(block.fresh_node_id(f"{op}.{vid}"), op, {"x": vid}, {}, attrs, [new.id], node.loc,
                          node.index + 0.25)
        block.add(collective)
        block.replace_uses(vid, new.id, among=readers)
        block.outputs = [new.id if o == vid else o for o in block.outputs]
        self.plan.collectives.append(Collective(block.name, op, old.name, op_label(block, node), str(node.loc), why,
                                                collective.index))
