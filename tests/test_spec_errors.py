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
    assert_at(errors_of(path, tmp_path), path, line, "model.graph[0].x", "'ids' must be an int tensor")


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


SCHEMA_SENTENCES = {
    "field_of_an_op": ("{op: silu, x: gate, label: act}", "{op: silu, x: gate, inplace: true}", "blocks.mlp.graph[2].gate.inplace",
                       "op 'silu' takes x; 'inplace' is not one of its fields"),
    "field_of_an_op_with_attributes": (
        "{op: silu, x: gate, label: act}", "{op: softcap, x: gate, cap: 30.0, dim: -1}", "blocks.mlp.graph[2].gate.dim",
        "op 'softcap' takes x and cap; 'dim' is not one of its fields"),
    "missing_operand": ("{op: silu, x: gate, label: act}", "{op: where, a: gate, value: 0}", "blocks.mlp.graph[2].gate",
                        "op 'where' needs cond (it takes cond and a; optionally b and value)"),
    "a_choice": ("{op: silu, x: gate, label: act}", "{op: gelu, x: gate, approximate: fast}", "blocks.mlp.graph[2].gate.approximate",
                 "approximate must be one of 'none' or 'tanh', got 'fast'"),
    "a_value_name": ("{op: silu, x: gate, label: act}", "{op: silu, x: 3}", "blocks.mlp.graph[2].gate.x",
                     "x must be the name of a tensor value, got 3"),
    "config_field_slip": ("num_layers:          {hf: num_hidden_layers, type: int}",
                          "num_layers:          {hf: num_hidden_layers, typ: int}",
                          "config.num_layers.typ", "config entry 'num_layers' takes hf, type, default and doc; 'typ' is "
                                                   "not one of its fields; did you mean 'type'?"),
    "param_dims": ("q_proj: {linear: [hidden_size, num_heads * head_dim]", "q_proj: {linear: [hidden_size]",
                   "blocks.attention.params.q_proj.linear", "linear needs at least 2 entries ([in, out])"),
    "param_kind": ("q_proj: {linear: [hidden_size, num_heads * head_dim]", "q_proj: {lineer: [hidden_size, num_heads * head_dim]",
                   "blocks.attention.params.q_proj", "param 'q_proj' needs exactly one kind: linear, grouped_linear, "
                                                     "embedding, norm, conv2d, conv1d, tensor or block; did you mean 'linear'?"),
    "a_name": ("name: llama", "name: 3llama", "name",
               "name must be a name of letters, digits and _ that does not start with a digit, got '3llama'"),
}


@pytest.mark.parametrize("case", list(SCHEMA_SENTENCES))
def test_schema_violations_read_as_sentences_at_their_line(tmp_path, case):
    old, new, yaml_path, sentence = SCHEMA_SENTENCES[case]
    path, line = broken(tmp_path, old, new)
    message = errors_of(path, tmp_path)
    assert_at(message, path, line, yaml_path, sentence)
    assert "[schema:" not in message and "properties/" not in message, message


def test_a_param_of_two_kinds_is_one_problem(tmp_path):
    path, line = broken(tmp_path, "q_proj: {linear: [hidden_size, num_heads * head_dim]",
                        "q_proj: {embedding: [2, 2], linear: [hidden_size, num_heads * head_dim]")
    message = errors_of(path, tmp_path)
    assert message.count("\n") == 0 and "param 'q_proj' gives embedding and linear; needs exactly one kind" in message


def test_did_you_mean_only_for_slips():
    from compiler.errors import did_you_mean
    from compiler.ops import OPS
    assert did_you_mean("sofmax", OPS) == "; did you mean 'softmax'?"
    assert did_you_mean("rms_nrom", OPS) == "; did you mean 'rms_norm'?"      # two letters swapped: one edit
    assert did_you_mean("intermediate", ["intermediate_size", "hidden_size"]) == "; did you mean 'intermediate_size'?"
    # other words a few letters away are not slips
    assert did_you_mean("softmax", [n for n in OPS if n != "softmax"]) == ""
    assert did_you_mean("argmin", OPS) == ""
    assert did_you_mean("c", ["a", "b"]) == ""


def test_an_unknown_op_close_to_none_gets_no_suggestion(tmp_path):
    path, line = broken(tmp_path, "{op: silu, x: gate, label: act}", "{op: swiglu, x: gate, label: act}")
    message = errors_of(path, tmp_path)
    assert_at(message, path, line, "blocks.mlp.graph[2].gate.op", "unknown op 'swiglu'")
    assert "did you mean" not in message


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
