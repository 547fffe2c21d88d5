"""Stable line labels for `extends:` edits, and a child's own weight rules replacing its parent's."""
from __future__ import annotations

from pathlib import Path

import pytest

from compiler.errors import SpecError
from compiler.spec import load_spec
from tests.llama_child import llama_child

ATTENTION = "      - y: {op: attention, q: q, k: k, v: v, causal: true, scale: head_dim ** -0.5, dropout: attention_dropout, label: attention}"
CHILD = """spec: 1
name: child
extends: llama
blocks:
  attention:
    edits:
      - {update: TARGET, set: {window: 4}}
"""


def family(tmp_path, target: str, parent_edit=None) -> Path:
    text = Path("specs/llama.yaml").read_text()
    assert ATTENTION in text
    if parent_edit:
        text = text.replace(*parent_edit)
    (tmp_path / "llama.yaml").write_text(text)
    (tmp_path / "child.yaml").write_text(CHILD.replace("TARGET", target))
    return tmp_path / "child.yaml"


def window_line(spec) -> str:
    return next(" ".join(line.outputs) + " = " + line.op for line in spec.blocks["attention"].graph
                if "window" in line.fields)


# the parent gains a `y` line before its attention: `y#1` now names that line, the label does not move
GAINS_A_LINE = ("      - y: {op: attention,", "      - y: {op: scale, x: q, by: 1.0}\n      - q: {op: scale, x: y, by: 1.0}\n"
                                              "      - y: {op: attention,")


def test_a_label_names_the_same_line_when_the_parent_gains_lines(tmp_path):
    assert window_line(load_spec(family(tmp_path, "attention"))) == "y = attention"
    assert window_line(load_spec(family(tmp_path, "attention", GAINS_A_LINE))) == "y = attention"
    with pytest.raises(SpecError, match="op 'scale' takes x and by; optionally round_factor; 'window' is not one of its fields"):
        load_spec(family(tmp_path, "y#1", GAINS_A_LINE))     # the line number moved to the scale line


def test_labels_are_unique_in_their_graph(tmp_path):
    path = family(tmp_path, "attention", ("{op: silu, x: gate, label: act}", "{op: silu, x: gate, label: attention}"))
    load_spec(path)                  # another graph may reuse a label
    path = family(tmp_path, "attention", ("split_heads, x: q, heads: num_heads}",
                                          "split_heads, x: q, heads: num_heads, label: attention}"))
    with pytest.raises(SpecError, match="label 'attention' is on 2 lines"):
        load_spec(path)             # an edit cannot tell which line it means
    with pytest.raises(SpecError, match=r"label 'attention' is already used by the line at blocks\.attention\.graph\[3\]"):
        load_spec(tmp_path / "llama.yaml")


def test_a_missing_target_lists_the_labels(tmp_path):
    with pytest.raises(SpecError, match=r"no line of the graph binds 'attn' \(it binds: k, q, v, y\) nor is labelled "
                                        r"so \(labels: attention\)"):
        load_spec(family(tmp_path, "attn"))


def test_weights_replace_drops_every_parent_rule(tmp_path):
    spec = load_spec(llama_child(tmp_path, "child", CHILD.replace("TARGET", "attention") + """
weights:
  replace:
    - {from: "{name}.{t}", to: "{name}.{t}"}
"""))
    assert [(r.sources, r.targets) for r in spec.weights] == [(["{name}.{t}"], ["{name}.{t}"])]
