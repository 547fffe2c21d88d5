"""`graphspec show`: Mermaid and Graphviz drawings, parsed back and checked against the IR."""
from __future__ import annotations

import re

import networkx as nx
import pytest

from compiler.lower import lower
from compiler.passes import run_pipeline
from compiler.spec import load_spec
from tools.cli import main
from tools.show import drawing, to_dot, to_mermaid

SPECS = ["specs/llama.yaml", "specs/mistral.yaml", "specs/qwen2.yaml"]
_DOT_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<id>[A-Za-z_][A-Za-z0-9_]*|-?[0-9.]+)|(?P<op>->|[{}\[\];=,]))')


def parse_dot(text: str) -> tuple[nx.DiGraph, dict[str, set[str]], dict[str, str]]:
    """A strict parser for the dot subset we write: digraph, attribute lines, clusters, nodes,
    edges. Anything else fails, so a syntax slip cannot pass. Returns the graph, the nodes of each
    cluster and each cluster's label."""
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _DOT_TOKEN.match(text, pos)
        assert m, f"bad dot at {text[pos:pos + 40]!r}"
        tokens.append(m.group(m.lastgroup))
        pos = m.end()
    graph, clusters, labels = nx.DiGraph(), {}, {}
    it = iter(tokens)

    def take(expected=None):
        token = next(it)
        assert expected is None or token == expected, f"expected {expected!r}, got {token!r}"
        return token

    def attrs():
        out, token = {}, take()
        while token != "]":
            key = token
            take("=")
            out[key] = take()
            token = take()
            if token == ",":
                token = take()
        return out

    def body(cluster):
        while True:
            token = take()
            if token == "}":
                return
            if token == "subgraph":
                name = take()
                assert name.startswith("cluster")
                take("{")
                clusters[name] = set()
                body(name)
                continue
            if token in ("node", "edge"):
                take("[")
                attrs()
                take(";")
                continue
            nxt = take()
            if nxt == "=":
                value = take()
                if token == "label" and cluster:
                    labels[cluster] = value.strip('"')
                take(";")
            elif nxt == "[":
                graph.add_node(token, **attrs())
                if cluster:
                    clusters[cluster].add(token)
                take(";")
            elif nxt == "->":
                dst = take()
                end = take()
                data = attrs() if end == "[" else {}
                if end == "[":
                    take(";")
                else:
                    assert end == ";"
                assert token in graph and dst in graph, f"edge {token} -> {dst} names an undeclared node"
                graph.add_edge(token, dst, **data)
            else:
                raise AssertionError(f"unexpected {token!r} {nxt!r}")

    take("digraph")
    take()
    take("{")
    body(None)
    assert next(it, None) is None, "text after the closing brace"
    return graph, clusters, labels


@pytest.mark.parametrize("path", SPECS)
def test_dot_parses_with_one_cluster_per_block_and_the_dataflow_of_the_ir(path):
    ir = lower(load_spec(path))
    graph, clusters, labels = parse_dot(to_dot(drawing(ir), ir.name))
    assert set(clusters) == {f"cluster__{b.name}" for b in ir.trunk()}
    for block in ir.trunk():
        name = block.name
        ops = [n for n in clusters[f"cluster__{name}"] if re.fullmatch(rf"{name}__n[0-9]+", n)]
        assert len(ops) == len(block.order())
        # every output is reached from the block's inputs through its own ops only
        inside = graph.subgraph(clusters[f"cluster__{name}"])
        for out in block.outputs:
            sink = f"{name}__out__{out.replace('.', '_')}"
            assert any(nx.has_path(inside, f"{name}__in__{i}", sink) for i in block.inputs)
    # the repeated layer is drawn once, with its count, and the model's repeat line points at it
    assert labels["cluster__decoder_layer"] == "decoder_layer (× num_layers)"
    (link,) = [(s, d) for s, d, a in graph.edges(data=True) if a.get("lhead") == "cluster__decoder_layer"]
    assert link[0].startswith("model__") and "× num_layers" in graph.nodes[link[0]]["label"]


def test_dot_shows_what_a_child_spec_changed():
    mistral = to_dot(drawing(lower(load_spec("specs/mistral.yaml"))), "mistral")
    llama = to_dot(drawing(lower(load_spec("specs/llama.yaml"))), "llama")
    assert 'label="y = attention [window=sliding_window]"' in mistral
    assert 'label="y = attention"' in llama


def parse_mermaid(text: str) -> tuple[dict[str, str], list[tuple[str, str]], dict[str, set[str]]]:
    """Checks the flowchart subset we write line by line: subgraphs (blocks, and fusion groups one
    level inside them), node declarations inside them, edges after them between declared ids.
    Returns node labels, edges and the nodes directly inside each subgraph."""
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == "flowchart TB"
    nodes, edges, clusters, stack = {}, [], {}, []
    node = re.compile(r'^( +)([A-Za-z0-9_]+)(\(\["|\["|\[\[")(.*)("\]\)|"\]|"\]\])$')
    edge = re.compile(r'^  ([A-Za-z0-9_]+) (-->|-\.->)(?:\|([^|]*)\|)? ([A-Za-z0-9_]+)$')
    for line in lines[1:]:
        if m := re.match(r'^( +)subgraph ([A-Za-z0-9_]+)\["([^"]*)"\]$', line):
            assert len(m.group(1)) == 2 + 2 * len(stack) and len(stack) < 2, f"bad nesting: {line!r}"
            stack.append(m.group(2))
            clusters[m.group(2)] = set()
        elif m := re.match(r"^( +)end$", line):
            assert stack and len(m.group(1)) == 2 * len(stack)
            stack.pop()
        elif line == "    direction TB":
            assert len(stack) == 1
        elif m := node.match(line):
            assert stack and len(m.group(1)) == 2 + 2 * len(stack) and '"' not in m.group(4)
            nodes[m.group(2)] = m.group(4)
            clusters[stack[-1]].add(m.group(2))
        elif m := edge.match(line):
            assert not stack
            src, dst = m.group(1), m.group(4)
            assert src in nodes and (dst in nodes or dst in clusters), line
            edges.append((src, dst))
        else:
            raise AssertionError(f"unexpected mermaid line {line!r}")
    assert not stack, "unclosed subgraph"
    return nodes, edges, clusters


@pytest.mark.parametrize("path", SPECS)
def test_mermaid_is_well_formed_with_one_subgraph_per_block(path):
    ir = lower(load_spec(path))
    nodes, edges, clusters = parse_mermaid(to_mermaid(drawing(ir)))
    assert set(clusters) == {f"cluster__{b.name}" for b in ir.trunk()}
    assert sum(1 for label in nodes.values() if "decoder_layer × num_layers" in label) == 1
    assert ("model__n2", "cluster__decoder_layer") in edges
    assert ("decoder_layer__n1", "cluster__attention") in edges
    graph = nx.DiGraph([e for e in edges if e[1] in nodes])
    assert nx.is_directed_acyclic_graph(graph)


def test_cli_show_writes_either_format(tmp_path, capsys):
    assert main(["show", "specs/qwen2.yaml"]) == 0
    assert capsys.readouterr().out.startswith("flowchart TB\n")
    out = tmp_path / "qwen2.dot"
    assert main(["show", "specs/qwen2.yaml", "--format", "dot", "-o", str(out)]) == 0
    graph, clusters, _ = parse_dot(out.read_text())
    assert "cluster__attention" in clusters and graph.number_of_nodes() > 20


@pytest.mark.parametrize("slip", [("];", "]"), ("-> ", "- "), ("subgraph cluster__mlp {", "subgraph cluster__mlp")])
def test_the_dot_check_rejects_a_syntax_slip(slip):
    text = to_dot(drawing(lower(load_spec("specs/llama.yaml"))), "llama")
    with pytest.raises(AssertionError):
        parse_dot(text.replace(*slip))


def test_fused_regions_are_drawn_as_boxes_inside_their_block():
    ir = run_pipeline(load_spec("specs/llama.yaml"), until="fuse")
    picture = drawing(ir)
    nodes, _, clusters = parse_mermaid(to_mermaid(picture))
    assert clusters["group__mlp__g_silu_mul"] == {"mlp__n2", "mlp__n3"}
    assert clusters["group__attention__g_rope_q_k"] == {"attention__n6", "attention__n7"}
    assert "mlp__n2" not in clusters["cluster__mlp"] and "mlp__n4" in clusters["cluster__mlp"]
    graph, dot_clusters, labels = parse_dot(to_dot(picture, "llama"))
    assert dot_clusters["cluster__group__mlp__g_silu_mul"] == {"mlp__n2", "mlp__n3"}
    assert labels["cluster__group__mlp__g_silu_mul"] == "silu_mul [pointwise]"
    assert graph.has_edge("mlp__n2", "mlp__n3")


def test_show_after_a_pass_draws_the_ir_at_that_point(capsys):
    assert main(["show", "specs/llama.yaml", "--after", "fuse"]) == 0
    nodes, edges, clusters = parse_mermaid(capsys.readouterr().out)
    ir = run_pipeline(load_spec("specs/llama.yaml"), until="fuse")
    for block in ir.trunk():
        for node in block.order():
            if node.region is not None:
                box = "group__" + re.sub(r"[^A-Za-z0-9_]", "_", f"{block.name}__{node.id}")
                assert clusters[box] == {re.sub(r"[^A-Za-z0-9_]", "_", f"{block.name}__{m.id}") for m in node.region.nodes}
    assert main(["show", "specs/llama.yaml", "--after", "lower"]) == 0
    assert "group__" not in capsys.readouterr().out
