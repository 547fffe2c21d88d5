"""Drawing an architecture from its IR: a Mermaid flowchart (GitHub renders it) or a Graphviz dot file.

Each block is a cluster drawn once, whatever the number of its uses; a repeated block carries its
count (`decoder_layer (× num_layers)`), and a call or repeat line points at the cluster it runs.
Nodes are op lines (`q = linear [q_proj]`), edges the values flowing between them, labelled where a
value comes out of an op with several outputs (`cos, sin = rope_table`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from compiler.ir import Block, ModelIR, Node
from runtime.expr import Expr

# Attributes worth seeing on a node: they change what the op computes, not just how it is fed.
SHOWN_ATTRS = ("window", "softcap", "causal", "heads", "approximate")


@dataclass
class Drawing:
    """A renderer-neutral picture: clusters of nodes, edges, and links from call nodes to clusters."""
    clusters: dict[str, str] = field(default_factory=dict)                 # block -> title
    nodes: dict[str, tuple[str, str, str]] = field(default_factory=dict)   # id -> (block, label, shape)
    edges: list[tuple[str, str, str]] = field(default_factory=list)        # (src, dst, label)
    links: list[tuple[str, str, str]] = field(default_factory=list)        # (call node, block, label)
    entry: dict[str, str] = field(default_factory=dict)                    # block -> its first node id
    groups: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # block -> [(group id, title)]
    group_of: dict[str, str] = field(default_factory=dict)                 # node id -> group id


def _id(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", "__".join(parts))


def _attr(value) -> str:
    return value.text if isinstance(value, Expr) else str(value)


def _label(node: Node, block: Block) -> str:
    outs = ", ".join(block.values[o].name for o in node.outputs)
    if node.block is not None:
        p = block.params[node.block]
        times = f" × {p.repeat.text}" if p.repeat is not None else ""
        return f"{outs} = {node.op} {node.block}: {p.block}{times}"
    extra = list(node.params.values())
    extra += [f"{k}={_attr(v)}" for k, v in node.attrs.items()
              if k in SHOWN_ATTRS and v is not None and not (k == "causal" and _attr(v) == "true")]
    return f"{outs} = {node.op}" + (f" [{', '.join(extra)}]" if extra else "")


def drawing(ir: ModelIR) -> Drawing:
    """The model's blocks as clusters; fused regions (after the fusion pass) as boxes inside them."""
    blocks = {b.name: b for b in ir.trunk()}
    uses: dict[str, list[str]] = {}
    for block in blocks.values():
        for p in block.params.values():
            if p.kind == "block" and p.block in blocks:
                uses.setdefault(p.block, []).append(f"× {p.repeat.text}" if p.repeat is not None else "")
    d = Drawing()
    # The model first, then blocks in the order they are first reached: the picture reads top-down.
    order, queue = [], ["model"]
    while queue:
        name = queue.pop(0)
        if name in order or name not in blocks:
            continue
        order.append(name)
        queue += [blocks[name].params[n.block].block for n in blocks[name].ops() if n.block is not None]
    order += [n for n in blocks if n not in order]
    for name in order:
        block = blocks[name]
        counts = sorted({u for u in uses.get(name, []) if u})
        title = ir.name if name == "model" else name
        d.clusters[name] = title + (f" ({', '.join(counts)})" if counts else "")
        made_by: dict[str, tuple[str, bool]] = {}   # value -> (node, one of several outputs)
        for vid in block.inputs:
            nid = _id(name, "in", vid)
            d.nodes[nid] = (name, block.values[vid].name, "input")
            made_by[vid] = (nid, False)
        for unit in block.order():
            members = unit.region.nodes if unit.region is not None else [unit]
            if unit.region is not None:
                gid = _id("group", name, unit.id)
                d.groups.setdefault(name, []).append((gid, f"{unit.region.name} [{unit.region.template}]"))
            for node in members:
                nid = _id(name, node.id)
                d.nodes[nid] = (name, _label(node, block), "call" if node.block else "op")
                if unit.region is not None:
                    d.group_of[nid] = gid
                for vid in node.inputs.values():
                    src, many = made_by[vid]
                    edge = (src, nid, block.values[vid].name if many else "")
                    if edge not in d.edges:
                        d.edges.append(edge)
                for vid in node.outputs:
                    made_by[vid] = (nid, len(node.outputs) > 1)
                if node.block is not None:
                    p = block.params[node.block]
                    d.links.append((nid, p.block, f"× {p.repeat.text}" if p.repeat is not None else "runs"))
        for vid in block.outputs:
            nid = _id(name, "out", vid)
            d.nodes[nid] = (name, block.values[vid].name, "output")
            d.edges.append((made_by[vid][0], nid, ""))
        d.entry[name] = next((n for n, (b, _, _) in d.nodes.items() if b == name), _id(name, "empty"))
    return d


# -- Mermaid ---------------------------------------------------------------------------------------
def _mermaid_text(text: str) -> str:
    return text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


_MERMAID_SHAPES = {"input": ('(["', '"])'), "output": ('(["', '"])'), "op": ('["', '"]'), "call": ('[["', '"]]')}


def to_mermaid(d: Drawing) -> str:
    lines = ["flowchart TB"]
    for block, title in d.clusters.items():
        lines.append(f'  subgraph {_id("cluster", block)}["{_mermaid_text(title)}"]')
        lines.append("    direction TB")

        def node_lines(group, indent):
            for nid, (b, label, shape) in d.nodes.items():
                if b == block and d.group_of.get(nid) == group:
                    left, right = _MERMAID_SHAPES[shape]
                    lines.append(f"{indent}{nid}{left}{_mermaid_text(label)}{right}")

        node_lines(None, "    ")
        for gid, title in d.groups.get(block, []):
            lines.append(f'    subgraph {gid}["{_mermaid_text(title)}"]')
            node_lines(gid, "      ")
            lines.append("    end")
        lines.append("  end")
    for src, dst, label in d.edges:
        lines.append(f"  {src} -->|{_mermaid_text(label)}| {dst}" if label else f"  {src} --> {dst}")
    for src, block, label in d.links:
        lines.append(f"  {src} -.->|{_mermaid_text(label)}| {_id('cluster', block)}")
    return "\n".join(lines) + "\n"


# -- Graphviz dot ----------------------------------------------------------------------------------
def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_DOT_SHAPES = {"input": "shape=ellipse, style=filled, fillcolor=\"#e8f0fe\"",
               "output": "shape=ellipse, style=filled, fillcolor=\"#e6f4ea\"",
               "op": "shape=box",
               "call": "shape=box, style=\"rounded,bold\""}


def to_dot(d: Drawing, name: str = "model") -> str:
    lines = [f"digraph {_dot_text(name)} {{", "  compound=true;", "  rankdir=TB;",
             "  node [fontname=\"Helvetica\", fontsize=10];", "  edge [fontname=\"Helvetica\", fontsize=9];"]
    for block, title in d.clusters.items():
        lines.append(f"  subgraph {_id('cluster', block)} {{")
        lines.append(f"    label={_dot_text(title)};")
        lines.append("    style=rounded;")

        def node_lines(group, indent):
            for nid, (b, label, shape) in d.nodes.items():
                if b == block and d.group_of.get(nid) == group:
                    lines.append(f"{indent}{nid} [label={_dot_text(label)}, {_DOT_SHAPES[shape]}];")

        node_lines(None, "    ")
        for gid, title in d.groups.get(block, []):
            lines += [f"    subgraph {_id('cluster', gid)} {{", f"      label={_dot_text(title)};",
                      "      style=dashed;"]
            node_lines(gid, "      ")
            lines.append("    }")
        lines.append("  }")
    for src, dst, label in d.edges:
        lines.append(f"  {src} -> {dst}" + (f" [label={_dot_text(label)}];" if label else ";"))
    for src, block, label in d.links:
        lines.append(f"  {src} -> {d.entry[block]} [lhead={_id('cluster', block)}, style=dashed, "
                     f"label={_dot_text(label)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
