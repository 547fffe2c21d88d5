"""The op reference comes from the registry: `graphspec ops`, `graphspec ops NAME` and schemas/ops.md
(checked in, kept fresh here), each op with an example that is a valid graph line."""
from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from compiler.op_reference import markdown, public_ops
from compiler.ops import OPS
from compiler.schema import spec_schema
from tools.cli import main

PUBLIC = [op.name for op in public_ops()]


def test_the_checked_in_op_reference_is_fresh():
    assert Path("schemas/ops.md").read_text() == markdown(), \
        "regenerate it: python -m tools.cli ops --markdown > schemas/ops.md"


@pytest.mark.parametrize("name", PUBLIC)
def test_each_example_is_a_valid_graph_line_of_its_op(name):
    schema = spec_schema()
    line = yaml.safe_load(OPS[name].example)
    jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/line"}).validate(line)
    (body,) = line.values()
    assert body["op"] == name and OPS[name].shape_doc


def test_ops_lists_one_line_per_op(capsys):
    assert main(["ops"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == PUBLIC
    assert not {"full_like", "keep_positions"} & {line.split()[0] for line in lines}     # inserted by passes


def test_ops_name_shows_one_op_in_full(capsys):
    assert main(["ops", "topk"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("topk(x, k, dim=-1, largest=true, sorted=true) -> 2 values")
    assert "k (expression; required)" in out and "largest (true or false; default true)" in out
    assert "shape: two values" in out and "weights, experts: {op: topk, x: probs, k: num_experts_per_tok}" in out
    assert main(["ops", "softmax"]) == 0
    assert "a row-reduction kernel over the last dim" in capsys.readouterr().out


def test_an_unknown_op_name_is_an_error_with_a_suggestion_for_a_slip(capsys):
    assert main(["ops", "sigmod"]) == 1
    assert "no op 'sigmod'; did you mean 'sigmoid'?" in capsys.readouterr().err
