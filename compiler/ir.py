"""The IR: one networkx graph of op nodes per block, every value typed with a symbolic shape.

Invariants (checked by `verify`): each value has exactly one producer (a node or a block input);
every node's operands are produced earlier in `order()`; a node's `index` is its spec line, so the
emitter can print values in the author's order; node ids are unique within their block. Passes
rewrite a `BlockIR` in place and must keep these invariants.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from compiler.ops.registry import TType


@dataclass
class Value:
    id: str           # unique in the block: "q", "q.1" after rebinding
    name: str         # the spec's name, used in generated code
    type: TType


@dataclass
class Node:
    id: str
    op: str                               # a registry op, or "call" / "repeat"
    inputs: dict[str, str]                # operand field -> value id
    params: dict[str, str]                # param field -> param name
    attrs: dict[str, Any]                 # attribute -> Expr (or None)
    outputs: list[str]                    # value ids
    path: tuple = ()                      # YAML path of the spec line
    index: float = 0                      # position in the author's graph
    block: str | None = None              # call / repeat: the block param instantiated


@dataclass
class BlockIR:
    name: str
    inputs: list[str]
    outputs: list[str]
    values: dict[str, Value] = field(default_factory=dict)
    graph: nx.DiGraph = field(default_factory=nx.DiGraph)
    doc: str = ""

    def add(self, node: Node) -> None:
        self.graph.add_node(node.id, node=node)
        producers = self.producers()
        for vid in node.inputs.values():
            if vid in producers:
                self.graph.add_edge(producers[vid], node.id, value=vid)

    def producers(self) -> dict[str, str]:
        return {vid: nid for nid, data in self.graph.nodes(data=True) for vid in data["node"].outputs}

    def order(self) -> list[Node]:
        nodes = nx.lexicographical_topological_sort(self.graph, key=lambda nid: self.graph.nodes[nid]["node"].index)
        return [self.graph.nodes[n]["node"] for n in nodes]

    def users(self, vid: str) -> list[Node]:
        return [n for n in self.order() if vid in n.inputs.values()]

    def dump(self) -> str:
        """One line per node, jaxpr-style: `q: float[B, S, H*D] = linear(x, w=q_proj)`."""
        lines = [f"block {self.name}({', '.join(f'{v}: {self.values[v].type}' for v in self.inputs)}):"]
        for node in self.order():
            outs = ", ".join(f"{o}: {self.values[o].type}" for o in node.outputs)
            args = [*node.inputs.values(), *(f"{k}={v}" for k, v in node.params.items()),
                    *(f"{k}={v}" for k, v in node.attrs.items() if v is not None)]
            target = f"{node.op}[{node.block}]" if node.block else node.op
            lines.append(f"  {outs} = {target}({', '.join(map(str, args))})")
        lines.append(f"  return {', '.join(self.outputs)}")
        return "\n".join(lines)


@dataclass
class ModelIR:
    spec: Any                                   # compiler.spec.Spec
    blocks: dict[str, BlockIR]                  # callees before callers; "model" last
    notes: list[str] = field(default_factory=list)
    heads: dict[str, BlockIR] = field(default_factory=dict)   # task heads over the model's outputs

    def dump(self) -> str:
        return "\n\n".join([*(b.dump() for b in self.blocks.values()),
                            *(f"head {n}:\n{b.dump()}" for n, b in self.heads.items())])
