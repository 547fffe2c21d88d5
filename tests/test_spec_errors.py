"""A broken spec names the file, line and YAML path of each mistake, and leaves nothing written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from compiler.errors import SpecError
from compiler.pipeline import compile_spec

LLAMA = Path("specs/llama.yaml").read_text()


def broken(tmp_path, old: str, new: str) -> tuple[Path, int]:
    """specs/llama.yaml with one edit; returns the file and the 1-based line of the edit."""
    assert old in LLAMA, old
    text = LLAMA.replace(old, new, 1)
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    return path, text[:text.index(new)].count("\n") + 1


def errors_of(path: Path, tmp_path) -> str:
    out = tmp_path / "artifact"
    with pytest.raises(SpecError) as info:
        compile_spec(path, out)
    assert not out.exists(), "a failed compile must leave no artifact directory"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".artifact")], "no temp dirs left"
    return str(info.value)


def assert_at(message: str, path: Path, line: int, yaml_path: str, *words: str) -> None:
    assert re.search(rf"{re.escape(str(path))}:{line}:\d+: at {re.escape(yaml_path)}", message), message
    for w in words:
        assert w in message, message


def test_unknown_op_is_named_with_a_suggestion(tmp_path):
    path, line = broken(tmp_path, "{op: linear, x: x, w: q_proj}", "{op: lineer, x: x, w: q_proj}")
    assert_at(errors_of(path, tmp_path), path, line, "blocks.attention.graph[0].q.op", "unknown op 'lineer'", "did you mean 'linear'")


def test_a_module_path_is_not_an_op(tmp_path):
    path, line = broken(tmp_path, "{op: silu, x: gate, label: act}", "{op: os.system, x: gate}")
    assert_at(errors_of(path, tmp_path), path, line, "blocks.mlp.graph[2].gate.op", "unknown op 'os.system'")


def test_undefined_value_is_reported_once(tmp_path):
    path, line = broken(tmp_path, "{op: mul, a: gate, b: up}", "{op: mul, a: gate, b: upp}")
    message = errors_of(path, tmp_path)
    assert_at(message, path, line, "blocks.mlp.graph[3].h.b", "undefined value 'upp'", "did you mean 'up'")


def test_unused_value_is_an_error(tmp_path):
    path, line = broken(tmp_path, "      - h:    {op: mul, a: gate, b: up}",
                        "      - h:    {op: mul, a: gate, b: gate}")
    message = errors_of(path, tmp_path)
    assert "value 'up' is never used" in message


def test_blocks_that_contain_each_other_are_a_cycle(tmp_path):
    path, _ = broken(tmp_path, "      down_proj: {linear: [intermediate_size, hidden_size], bias: mlp_bias}",
                     "      down_proj: {linear: [intermediate_size, hidden_size], bias: mlp_bias}\n      loop: {block: decoder_layer}")
    assert "blocks contain each other" in errors_of(path, tmp_path)


def test_shape_mismatch_names_both_shapes(tmp_path):
    path, line = broken(tmp_path, "o_proj: {linear: [num_heads * head_dim, hidden_size]",
                        "o_proj: {linear: [hidden_size, hidden_size]")
    message = errors_of(path, tmp_path)
    assert "last dim of 'x' must equal the input size of 'o_proj'" in message
    assert "head_dim*num_heads" in message.replace(" ", "") and "hidden_size" in message


def test_dtype_clash_float_ids_for_an_embedding(tmp_path):
    path, line = broken(tmp_path, "{op: embedding, ids: input_ids, w: embed, label: embed}", "{op: embedding, ids: position_ids, w: embed}")
    text = path.read_text().replace("position_ids: {shape: [B, S], dtype: int}", "position_ids: {shape: [B, S]}")
    path.write_text(text)
    assert_at(errors_of(path, tmp_path), path, line, "model.graph[0].x", "'ids' must be a int tensor")


def test_bad_expression_points_at_its_line(tmp_path):
    path, line = broken(tmp_path, "int = hidden_size // num_heads", "{hf: head_dim, type: int, default: hidden_size // }")
    assert_at(errors_of(path, tmp_path), path, line, "config.head_dim.default", "bad expression")


def test_unknown_config_name_in_a_shape(tmp_path):
    path, line = broken(tmp_path, "gate_proj: {linear: [hidden_size, intermediate_size]",
                        "gate_proj: {linear: [hidden_size, intermediate]")
    assert_at(errors_of(path, tmp_path), path, line, "blocks.mlp.params.gate_proj", "unknown config name 'intermediate'",
              "did you mean 'intermediate_size'")


def test_config_defaults_in_a_cycle(tmp_path):
    path, _ = broken(tmp_path, "{hf: num_attention_heads, type: int}", "{hf: num_attention_heads, type: int, default: hidden_size // head_dim}")
    assert "config defaults form a cycle" in errors_of(path, tmp_path)


def test_weight_rule_onto_no_param_and_param_left_unmapped(tmp_path):
    path, line = broken(tmp_path, 'to: "norm.weight"}', 'to: "final_norm.weight"}')
    message = errors_of(path, tmp_path)
    assert_at(message, path, line, "weights[5].to", "target 'final_norm.weight' maps onto no param")
    assert "param 'norm.weight' is fed by no weight rule" in message


def test_schema_violation_names_the_keyword_and_schema_path(tmp_path):
    path, line = broken(tmp_path, "{op: silu, x: gate, label: act}", "{op: silu, x: gate, inplace: true}")
    message = errors_of(path, tmp_path)
    assert_at(message, path, line, "blocks.mlp.graph[2].gate.inplace", "unexpected field(s) 'inplace'", "keyword 'additionalProperties'")


def test_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path, line = broken(tmp_path, "name: llama", f"name: !!python/object/apply:os.system ['touch {marker}']")
    assert "python/object/apply:os.system" in errors_of(path, tmp_path)
    assert not marker.exists()


def test_duplicate_keys_report_both_lines(tmp_path):
    path, line = broken(tmp_path, "  mlp_bias:            bool = false",
                        "  mlp_bias:            bool = false\n  mlp_bias: {hf: x}")
    message = errors_of(path, tmp_path)
    assert f"duplicate key 'mlp_bias' (first at line {line})" in message


def test_several_mistakes_are_reported_together(tmp_path):
    path, _ = broken(tmp_path, "{op: silu, x: gate, label: act}", "{op: silu, x: gatee}")
    text = path.read_text().replace("{op: rms_norm, x: x, w: norm, eps: rms_norm_eps, label: norm}", "{op: rms_norm, x: x, w: norms, eps: rms_norm_eps}")
    path.write_text(text)
    message = errors_of(path, tmp_path)
    assert "undefined value 'gatee'" in message and "unknown param 'norms'" in message


def test_a_spec_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- just\n- a list\n")
    assert "a spec must be a YAML mapping" in errors_of(path, tmp_path)


def test_a_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read the spec"):
        compile_spec(tmp_path / "nope.yaml", tmp_path / "out")
