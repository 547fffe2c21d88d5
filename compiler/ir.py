"""The IR: the whole model as data, and the single source of truth for every pass and emitter.

A `ModelIR` holds what the spec declared, checked and typed: config entries, checks and weight
rules (carried through for the runtime), and one `Block` per spec block, the model and each task
head (a head is an ordinary block whose inputs are the model's outputs). A block is a networkx
multigraph of `Node`s whose edges are keyed by the value they carry (two ops may share several
values: rope_table's cos and sin into a layer stack), plus its params, typed values, inputs and
outputs. Passes rewrite blocks in place and record what they decided on the IR (fusion regions,
the cut of the per-position tail, the runtime contract); emitters only read it.

Invariants, checked by `compiler.verify.verify` after every pass in the test suite:
- every value has exactly one definition (a block input or one node's output) and is defined
  before it is used in `order()`; edges mirror the operands exactly;
- every node's operand types agree with its op's shape rule, and its output types are the rule's;
- every param is used by a node (a fused param's members through the fused param);
- a param marked quantized is read only through op fields that declare it quantizable, in its
  role's way (`OpDef.quantizable`); a fused param and its members carry one mark;
- a region node's members are not in the block graph; its inputs are exactly the values its
  members read from outside, its outputs the member values read after it or returned;
- the block graph is acyclic, so regions never depend on each other in a cycle;
- conditions (`when:` in the spec): a node whose `when` (a conjunction of config expressions, never
  a constant: constant conditions are decided by the lowering) does not hold does not run. Each of
  its outputs either has an `orelse` value — defined before the node, of the same type, what the
  output is when the node does not run (a line rebinding a name under `when` keeps the previous
  value) — or exists only under the node's conditions. A value that exists only under conditions C
  is read only by nodes whose conditions include C, and is never a block output; a param under
  conditions C (absent from the module elsewhere) is used only by nodes whose conditions include C.
  Conditional nodes are never region members.
Node ids are unique within their block; a node's `index` is its place in the author's graph
(passes insert nodes at fractional indexes), so emitters print values in the author's order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from compiler.ops.registry import TType

REGION = "region"        # the op of a node that stands for a fused group
STRUCTURAL = ("call", "repeat")


@dataclass(frozen=True)
class Loc:
    """Where something came from: the spec file (the one that wrote it, through `extends`), its line,
    and its YAML path (for SpecErrors at that place)."""
    file: str | None = None
    line: int | None = None
    path: tuple = ()

    def __str__(self) -> str:
        name = Path(self.file).name if self.file else "<spec>"
        return f"{name}:{self.line}" if self.line else name


@dataclass
class Value:
    id: str           # unique in the block: "q", "q.1" after rebinding
    name: str         # the spec's name, used in generated code
    type: TType


@dataclass
class Region:
    """A fused group: member ops computed by one function (one Triton kernel where there is one)."""
    name: str                         # the group's name (unique in its block)
    template: str                     # pointwise | row_reduction | rope | flash_attention | projection
    nodes: list["Node"]               # members, in the author's order
    inputs: list[str]                 # value ids read from outside, in first-use order
    outputs: list[str]                # value ids read after the region or returned
    fused_param: str | None = None    # a projection: the fused param holding the concatenated weights
    dtypes: dict[str, str] = field(default_factory=dict)   # a kernel's view: each value's dtype class
    # set by select_kernels: the function model.py defines for this body (shared by every region
    # computing the same thing; None: printed in place) and its Triton kernel, if a template takes it
    function: Any = None
    kernel: Any = None

    @property
    def members(self) -> list["Node"]:
        return self.nodes


@dataclass
class Node:
    id: str
    op: str                               # a registry op, "call", "repeat" or "region"
    inputs: dict[str, str]                # operand field -> value id
    params: dict[str, str]                # param field -> param name
    attrs: dict[str, Any]                 # attribute -> Expr (or None)
    outputs: list[str]                    # value ids
    loc: Loc = field(default_factory=Loc)
    index: float = 0                      # position in the author's graph
    block: str | None = None              # call / repeat: the block param it runs
    region: Region | None = None          # op "region": the fused group
    seq: str | None = None                # context ops: the model-level sequence they run along
    when: tuple = ()                      # conjuncts (Exprs): the node runs only where all hold
    orelse: dict[str, str] = field(default_factory=dict)   # output id -> its value when the node does not run

    @property
    def reads(self) -> list[str]:
        """Every value the node reads: its operands, then the values its outputs keep when it does not run."""
        return [*self.inputs.values(), *self.orelse.values()]
    # repeat: the op defer_carried_ops moved out of the layers, which makes the carried value from the
    # layer's outputs: (op, attrs, base field, delta field, base output index, delta output index)
    carried: Any = None


@dataclass
class Param:
    name: str
    kind: str                        # a PARAM_KINDS name, "block", or "fused_linear"
    dims: dict[str, Any]             # tensor kinds: linear -> {"in": Expr, "out": Expr}
    options: dict[str, Any]          # e.g. bias
    loc: Loc = field(default_factory=Loc)
    block: str | None = None         # kind "block": the block it instantiates
    repeat: Any = None               # a repeated block: the count (Expr)
    tied_to: str | None = None
    tied_when: Any = None
    static: bool = False             # a block whose inputs do not change while decoding: run once
    members: list[str] = field(default_factory=list)   # fused_linear: the params it concatenates
    fused_into: str | None = None    # a member of a fused param: that param
    when: tuple = ()                 # conjuncts (Exprs): the param exists only where all hold
    quant: str | None = None         # the quantize pass: stored quantized, in this role (runtime.quant.config.ROLES)


@dataclass
class Block:
    name: str
    role: str                                   # "block", "model" or "head"
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    values: dict[str, Value] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    graph: nx.MultiDiGraph = field(default_factory=nx.MultiDiGraph)
    doc: str = ""
    loc: Loc = field(default_factory=Loc)
    source: str = ""                            # the spec block it instantiates (block options)
    options: dict[str, Any] = field(default_factory=dict)   # the option values of this instance
    # the training loss of its outputs: {"kind", "outputs" (value names), "options" (name -> Expr)}
    loss: dict | None = None
    # the value that ends the hidden states its repeated layers report (output_hidden_states), or None
    last_hidden: str | None = None

    # -- reading --------------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        return [data["node"] for _, data in self.graph.nodes(data=True)]

    def node(self, nid: str) -> Node:
        return self.graph.nodes[nid]["node"]

    def order(self) -> list[Node]:
        """Topological order, ties broken by the author's order."""
        key = {nid: data["node"].index for nid, data in self.graph.nodes(data=True)}
        return [self.node(n) for n in nx.lexicographical_topological_sort(self.graph, key=key.__getitem__)]

    def producers(self) -> dict[str, str]:
        return {vid: n.id for n in self.nodes() for vid in n.outputs}

    def users(self, vid: str) -> list[Node]:
        return [n for n in self.order() if vid in n.reads]

    def ops(self) -> list[Node]:
        """Every op node, region members in place of their region."""
        out = []
        for n in self.order():
            out += n.region.nodes if n.region is not None else [n]
        return out

    # -- rewriting --------------------------------------------------------------------------------
    def add(self, node: Node) -> None:
        """Add a node whose operands are already defined; its edges are keyed by value."""
        self.graph.add_node(node.id, node=node)
        producers = self.producers()
        for vid in dict.fromkeys(node.reads):
            if vid in producers and producers[vid] != node.id:
                self.graph.add_edge(producers[vid], node.id, key=vid)
        for vid in node.outputs:
            for user in self.nodes():
                if vid in user.reads and user.id != node.id:
                    self.graph.add_edge(node.id, user.id, key=vid)

    def remove(self, nid: str) -> Node:
        node = self.node(nid)
        self.graph.remove_node(nid)
        return node

    def replace_uses(self, old: str, new: str, among: list[Node] | None = None) -> None:
        """Operands reading `old` read `new` instead (in `among`, or everywhere), edges and outputs too."""
        producers = self.producers()
        for user in (among if among is not None else self.nodes()):
            fields = [f for f, v in user.inputs.items() if v == old]
            kept = [o for o, v in user.orelse.items() if v == old]
            if not fields and not kept:
                continue
            for f in fields:
                user.inputs[f] = new
            for o in kept:
                user.orelse[o] = new
            if old in producers and self.graph.has_edge(producers[old], user.id, key=old):
                self.graph.remove_edge(producers[old], user.id, key=old)
            if new in producers:
                self.graph.add_edge(producers[new], user.id, key=new)
        if among is None:
            self.outputs = [new if o == old else o for o in self.outputs]

    def fresh_value(self, name: str, type: TType) -> Value:
        """A new value named `name` in generated code, with an id unique in the block."""
        vid, n = name, 1
        while vid in self.values:
            vid, n = f"{name}.{n}", n + 1
        value = Value(vid, name, type)
        self.values[vid] = value
        return value

    def fresh_node_id(self, base: str) -> str:
        nid, n = base, 2
        while self.graph.has_node(nid):
            nid, n = f"{base}.{n}", n + 1
        return nid


@dataclass
class Head:
    name: str
    architectures: list[str]
    block: str                    # its key in ModelIR.blocks
    loc: Loc = field(default_factory=Loc)


@dataclass
class Decision:
    """One fusion decision, taken or refused, with its reason (the `--explain` report)."""
    block: str
    rule: str
    what: str
    taken: bool
    reason: str
    score: int = 0
    ops: tuple = ()               # the ops involved, for contracts that ask why a fusion did not happen


@dataclass
class ModelIR:
    name: str
    doc: str
    file: str | None
    sha256: str
    data: dict                               # the resolved spec as plain data (spec.json)
    sources: Any                             # compiler.yaml_source.SourceMap, for SpecErrors
    config: dict[str, Any]                   # compiler.spec.ConfigEntry by name
    checks: list[Any]                        # compiler.spec.Check
    weights: list[Any]                       # compiler.spec.WeightRule
    matches: dict[str, list[str]]
    blocks: dict[str, Block]                 # callees before callers, then "model", then the heads
    heads: dict[str, Head] = field(default_factory=dict)
    base_prefix: str = ""
    init: Any = None                         # compiler.spec.InitDecl: initialisation without a checkpoint
    expect_fused: list[tuple[str, tuple]] = field(default_factory=list)   # (entry, YAML path)
    # the model's runtime-contract declarations (compiler/spec.py InputDecl roles, GenerateDecl)
    model_inputs: dict[str, Any] = field(default_factory=dict)
    generate: Any = None
    # What passes decided, kept on the IR so emitters read one object:
    keep_positions: list[str] = field(default_factory=list)   # values cut before the per-position tail
    decisions: list[Decision] = field(default_factory=list)   # fusion report
    fused: bool = False                                       # the fusion pass ran
    contract: Any = None                                      # compiler.contract.Contract
    parallel: Any = None                                      # compiler.parallel.ParallelPlan (--tp)
    quantization: dict | None = None                          # the quantize pass's config (--quant), as a dict
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> Block:
        return self.blocks["model"]

    def head_block(self, head: str) -> Block:
        return self.blocks[self.heads[head].block]

    def trunk(self) -> list[Block]:
        """The blocks of the model without its heads, callees first."""
        return [b for b in self.blocks.values() if b.role != "head"]

    def callee(self, block: Block, node: Node) -> Block:
        return self.blocks[block.params[node.block].block]

    def problem(self, path: tuple, message: str):
        return self.sources.problem(path, message)

    def regions(self) -> list[tuple[Block, Region]]:
        return [(b, n.region) for b in self.blocks.values() for n in b.order() if n.region is not None]

    def dump(self) -> str:
        from compiler.printer import dump_block
        return "\n\n".join(dump_block(self, b) for b in self.blocks.values())
