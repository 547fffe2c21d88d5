"""Spec inheritance: `extends` and the delta language, resolved before validation, with positions."""
from __future__ import annotations

import contextlib
import copy
import io
import shutil
import textwrap
from pathlib import Path

import pytest

from compiler.errors import SpecError
from compiler.lower import lower
from compiler.pipeline import compile_spec
from compiler.spec import load_spec, spec_from_data
from compiler.yaml_source import load_yaml
from tools.cli import main

LLAMA = Path("specs/llama.yaml")
HEADER = "spec: 1\nname: child\nextends: llama\n"


@pytest.fixture
def specs(tmp_path):
    shutil.copy(LLAMA, tmp_path / "llama.yaml")
    return tmp_path


def write(folder: Path, name: str, body: str, header: str = HEADER) -> Path:
    path = folder / name
    path.write_text(header + textwrap.dedent(body))
    return path


def problems(path) -> list:
    with pytest.raises(SpecError) as info:
        lower(load_spec(path))
    return info.value.problems


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def graph(spec, block="attention") -> list[tuple]:
    return [(tuple(line.outputs), line.op) for line in spec.blocks[block].graph]


def test_mistral_is_llama_plus_a_window_and_nothing_else():
    llama, mistral = load_spec("specs/llama.yaml"), load_spec("specs/mistral.yaml")
    assert "extends" not in mistral.data
    expected = copy.deepcopy(llama.data)
    expected.update(name="mistral", doc=mistral.data["doc"], matches=mistral.data["matches"])
    expected["config"]["sliding_window"] = "int = null"
    expected["checks"].append(mistral.data["checks"][-1])
    expected["blocks"]["attention"]["graph"][8]["y"]["window"] = "sliding_window"
    assert mistral.data == expected
    assert mistral.blocks["attention"].graph[8].fields["window"].text == "sliding_window"


def test_qwen2_turns_q_k_v_biases_on_and_o_proj_off():
    qwen2 = load_spec("specs/qwen2.yaml")
    params = qwen2.blocks["attention"].params
    assert {p: params[p].options["bias"].text for p in params} == {
        "q_proj": "true", "k_proj": "true", "v_proj": "true", "o_proj": "false"}
    assert params["q_proj"].dims["out"].text == "num_heads * head_dim"   # the rest is the parent's
    assert "attention_bias" not in qwen2.config
    assert "matches" in qwen2.data and qwen2.matches["model_type"] == ["qwen2"]


def test_roberta_is_bert_with_padding_aware_positions_and_its_own_tensor_names():
    bert, roberta = load_spec("specs/bert.yaml"), load_spec("specs/roberta.yaml")
    expected = copy.deepcopy(bert.data)
    expected.update(name="roberta", doc=roberta.data["doc"], matches=roberta.data["matches"], base_prefix="roberta.")
    expected["config"]["padding_idx"] = {"hf": "pad_token_id", "type": "int", "default": 1}
    pos = expected["model"]["graph"].index({"pos": {"op": "positions", "ids": "input_ids"}})
    expected["model"]["graph"][pos:pos + 1] = roberta.data["model"]["graph"][pos:pos + 4]
    for head, arch in zip(expected["heads"].values(), ["RobertaModel", "RobertaForMaskedLM",
                          "RobertaForSequenceClassification", "RobertaForTokenClassification",
                          "RobertaForQuestionAnswering"]):
        head["architectures"] = [arch]
    # RobertaClassificationHead drops the first token's state before its dense layer too
    classifier = expected["heads"]["sequence_classification"]["graph"]
    classifier.insert(1, {"first": {"op": "dropout", "x": "first",
                                    "p": "classifier_dropout if classifier_dropout != null else hidden_dropout"}})
    new_rules = roberta.data["weights"][:9]
    assert all(r["from"].startswith(("lm_head.", "classifier.")) for r in new_rules)
    expected["weights"] = new_rules + expected["weights"]
    assert roberta.data == expected
    assert [line.op for line in roberta.model.graph[:4]] == ["not_equal", "cumsum", "mul", "add_scalar"]


def test_qwen3_norms_each_query_and_key_head_between_split_and_rope():
    qwen3 = load_spec("specs/qwen3.yaml")
    assert [(outs[0], op) for outs, op in graph(qwen3)[3:10]] == [
        ("q", "split_heads"), ("k", "split_heads"), ("v", "split_heads"), ("q", "rms_norm"), ("k", "rms_norm"),
        ("q", "rope"), ("k", "rope")]
    assert "max_window_layers" in qwen3.blocks["attention"].graph[10].fields["window"].text
    assert "mlp_bias" not in qwen3.config
    assert {p.options["bias"].text for p in qwen3.blocks["mlp"].params.values()} == {"false"}


def test_t5_v1_1_is_t5_with_a_gated_gelu_feed_forward():
    t5, v11 = load_spec("specs/t5.yaml"), load_spec("specs/t5_v1_1.yaml")
    expected = copy.deepcopy(t5.data)
    expected.update(name="t5_v1_1", doc=v11.data["doc"], matches=v11.data["matches"])
    expected["checks"] = [{"that": 'feed_forward_proj == "gated-gelu"',
                           "else": "this spec describes feed_forward_proj: gated-gelu (relu is specs/t5.yaml)"}]
    ff = expected["blocks"]["feed_forward"]
    del ff["params"]["wi"]
    ff["params"].update(wi_0={"linear": ["d_model", "d_ff"]}, wi_1={"linear": ["d_model", "d_ff"]})
    ff["graph"] = v11.data["blocks"]["feed_forward"]["graph"]
    assert v11.data == expected
    assert graph(v11, "feed_forward") == [(("g",), "linear"), (("g",), "gelu"), (("u",), "linear"),
                                          (("h",), "mul"), (("h",), "dropout"), (("y",), "linear")]


@pytest.fixture
def bert_specs(tmp_path):
    shutil.copy("specs/bert.yaml", tmp_path / "bert.yaml")
    return tmp_path


def test_heads_merge_by_name_like_blocks(bert_specs):
    child = write(bert_specs, "child.yaml", """\
        heads:
          base: {architectures: [ChildModel]}
          masked_lm:
            params:
              decoder: {bias: false}
            edits:
              - {update: h#2, set: {approximate: tanh}}
          sequence_classification:
            params:
              pooler: {remove: true}
            graph:
              - logits: {op: linear, x: last_hidden_state, w: classifier}
          token_classification: {remove: true}
          span:
            architectures: [ChildForSpan]
            params:
              span_out: {linear: [hidden_size, 2], bias: true}
            graph:
              - span: {op: linear, x: last_hidden_state, w: span_out}
            outputs: [span]
        weights:
          - {from: "span_out.{t}", to: "span_out.{t}"}
        """, header="spec: 1\nname: child\nextends: bert\n")
    spec = load_spec(child)
    lower(spec)
    heads = spec.data["heads"]
    assert list(heads) == ["base", "masked_lm", "sequence_classification", "question_answering", "span"]
    assert heads["base"]["architectures"] == ["ChildModel"] and heads["base"]["outputs"] == [
        "last_hidden_state", "pooler_output"]
    decoder = heads["masked_lm"]["params"]["decoder"]
    assert decoder["bias"] is False and decoder["tied"] == {"to": "word_embed", "when": "tie_word_embeddings"}
    assert heads["masked_lm"]["graph"][1] == {"h": {"op": "gelu", "x": "h", "approximate": "tanh"}}
    assert heads["masked_lm"]["architectures"] == ["BertForMaskedLM", "BertForPreTraining"]
    assert list(heads["sequence_classification"]["params"]) == ["classifier"]
    assert len(heads["sequence_classification"]["graph"]) == 1


def test_head_mistakes_name_the_head(bert_specs):
    child = write(bert_specs, "child.yaml", """\
        heads:
          nope: {remove: true}
          fresh:
            edits:
              - {remove: logits}
          masked_lm:
            edits:
              - {remove: nothing}
        """, header="spec: 1\nname: child\nextends: bert\n")
    with pytest.raises(SpecError) as info:
        load_spec(child)
    messages = [(p.message, p.path, p.line) for p in info.value.problems]
    assert "cannot remove head 'nope': the parent has none" in messages[0][0]
    assert "head 'fresh' is new in this spec, so there is no graph to edit" in messages[1][0]
    assert messages[1][1] == "heads.fresh.edits"
    assert "no line of the graph binds 'nothing'" in messages[2][0] and messages[2][1].startswith("heads.masked_lm")
    assert messages[2][2] == line_of(child, "{remove: nothing}")


def test_matches_are_not_inherited(specs):
    child = write(specs, "child.yaml", "")
    spec = load_spec(child)
    assert spec.matches == {} and spec.name == "child"
    assert spec.data["blocks"] == load_spec(specs / "llama.yaml").data["blocks"]


def test_a_mistake_in_the_child_points_at_the_child_file_and_line(specs):
    child = write(specs, "child.yaml", """\
        blocks:
          attention:
            edits:
              - {update: y#1, set: {window: sliding_windw}}
        """)
    (p,) = problems(child)
    assert p.file == str(child) and p.line == line_of(child, "sliding_windw")
    assert "unknown config name 'sliding_windw'" in p.message


def test_a_mistake_the_child_exposes_in_the_parent_points_at_the_parent(specs):
    # Removing a config entry the parent still uses: the broken use is in llama.yaml.
    child = write(specs, "child.yaml", "config:\n  mlp_bias: {remove: true}\n")
    found = problems(child)
    assert found and all(p.file == str(specs / "llama.yaml") for p in found)
    assert {p.line for p in found} == {line_of(specs / "llama.yaml", f"{n}:") for n in
                                       ("gate_proj", "up_proj", "down_proj")}
    assert all("unknown config name 'mlp_bias'" in p.message for p in found)


def test_schema_errors_after_resolution_name_the_file_that_wrote_the_value(specs):
    child = write(specs, "child.yaml", "config:\n  hidden_size: {type: integer}\n")
    with pytest.raises(SpecError) as info:
        load_spec(child)
    (p,) = info.value.problems
    assert p.file == str(child) and p.line == 5 and p.path == "config.hidden_size.type"


def test_insert_replace_remove_and_update_edit_lines_by_output_name(specs):
    child = write(specs, "child.yaml", """\
        config:
          qk_norm_eps: {type: float, default: 1e-6}
        blocks:
          attention:
            params:
              q_norm: {norm: head_dim}
            edits:
              - insert: {q: {op: rms_norm, x: q, w: q_norm, eps: qk_norm_eps}}
                after: q#2
              - {update: y#1, set: {scale: 0.5}, unset: [causal]}
              - remove: v#2
              - replace: v#1
                with:
                  - {v: {op: linear, x: x, w: v_proj}}
                  - {v: {op: split_heads, x: v, heads: num_kv_heads}}
        """)
    spec = load_spec(child)
    lower(spec)
    assert graph(spec) == [
        (("q",), "linear"), (("k",), "linear"), (("v",), "linear"), (("v",), "split_heads"),
        (("q",), "split_heads"), (("q",), "rms_norm"), (("k",), "split_heads"), (("q",), "rope"),
        (("k",), "rope"), (("y",), "attention"), (("y",), "merge_heads"), (("y",), "linear")]
    attention = spec.blocks["attention"].graph[9]
    assert attention.fields["scale"].text == "0.5" and "causal" not in attention.fields
    inserted = spec.blocks["attention"].graph[5].path
    assert spec.sources.file_of(inserted) == str(child)
    assert spec.sources.mark(inserted)[0] == line_of(child, "op: rms_norm")
    assert spec.sources.file_of(spec.blocks["attention"].graph[0].path) == str(specs / "llama.yaml")


def test_insert_before(specs):
    child = write(specs, "child.yaml", """\
        blocks:
          mlp:
            edits:
              - {insert: {up: {op: silu, x: up}}, before: h}
        """)
    assert graph(load_spec(child), "mlp")[2:4] == [(("gate",), "silu"), (("up",), "silu")]


@pytest.mark.parametrize("target, message", [
    ("y", "'y' is bound by 3 lines; say which: y#1 (attention at llama.yaml:"),
    ("y#4", "'y#4': only 3 line(s) bind 'y'"),
    ("z", "no line of the graph binds 'z' (it binds: k, q, v, y)"),
    ("y#x", "a line is named by an output name, or name#n"),
])
def test_bad_edit_targets_are_explained(specs, target, message):
    child = write(specs, "child.yaml", f"""\
        blocks:
          attention:
            edits:
              - {{update: '{target}', set: {{window: 4}}}}
        """)
    (p,) = problems(child)
    assert message in p.message and p.file == str(child) and p.line == 7


def test_an_edit_with_two_kinds_or_a_stray_field_is_refused(specs):
    child = write(specs, "child.yaml", """\
        blocks:
          attention:
            edits:
              - {remove: y#1, update: y#2}
              - {remove: y#1, after: q#1}
              - {insert: {z: {op: silu, x: y}}}
        """)
    messages = [p.message for p in problems(child)]
    assert "names exactly one of update, replace, insert, remove" in messages[0]
    assert "unexpected field(s) 'after' in a remove edit" in messages[1]
    assert "exactly one anchor" in messages[2]


def test_params_merge_fields_unless_the_kind_is_restated(specs):
    child = write(specs, "child.yaml", """\
        blocks:
          attention:
            params:
              q_proj: {bias: true}
              o_proj: {linear: [num_heads * head_dim, hidden_size]}
          decoder_layer:
            params:
              mlp_norm: {remove: true}
              post_norm: {norm: hidden_size}
            edits:
              - {update: h#3, set: {w: post_norm}}
        """)
    spec = load_spec(child)
    lower(spec)
    q, o = spec.blocks["attention"].params["q_proj"], spec.blocks["attention"].params["o_proj"]
    assert q.options["bias"].text == "true" and q.dims["in"].text == "hidden_size"
    assert o.options["bias"].text == "false"    # the restated param does not keep the parent's bias
    assert list(spec.blocks["decoder_layer"].params) == ["attn_norm", "attn", "mlp", "post_norm"]


def test_removing_what_the_parent_does_not_have_is_an_error(specs):
    child = write(specs, "child.yaml", """\
        config:
          nope: {remove: true}
          vocab_size: {remove: yes please}
        weights:
          - {remove: "model.nope.weight"}
        checks:
          - {remove: "num_heads > 0"}
        """)
    with pytest.raises(SpecError) as info:
        load_spec(child)
    messages = [p.message for p in info.value.problems]
    assert "cannot remove config entry 'nope': the parent has none" in messages[0]
    assert "remove must be true" in messages[1]
    assert "no parent weight rule has from: 'model.nope.weight'" in messages[2]
    assert "no parent check has that: 'num_heads > 0'" in messages[3]


def test_config_entries_merge_field_by_field_and_checks_by_condition(specs):
    child = write(specs, "child.yaml", """\
        config:
          num_kv_heads: {default: 1}
          extra: {hf: extra, type: int, default: 3}
        checks:
          - {that: hidden_act == "silu", else: "only silu here"}
          - {remove: "num_heads % num_kv_heads == 0"}
          - {that: extra > 0, else: "extra must be positive"}
        """)
    spec = load_spec(child)
    kv = spec.config["num_kv_heads"]
    assert kv.hf == ["num_key_value_heads"] and kv.default.text == "1"
    assert list(spec.config)[-1] == "extra"
    assert [c.message for c in spec.checks] == ["only silu here", "rope scaling type must be default, linear or llama3",
                                                "extra must be positive"]


def test_weight_rules_override_in_place_and_new_ones_come_first(specs):
    child = write(specs, "child.yaml", """\
        weights:
          - {from: "model.norm.weight", to: "norm.weight", when: "true"}
          - {from: "model.layers.{i}.self_attn.qkv_proj.weight", to: "layers.{i}.attn.q_proj.weight"}
          - {remove: "lm_head.weight"}
        """)
    froms = [r.sources[0] for r in load_spec(child).weights]
    assert froms[0] == "model.layers.{i}.self_attn.qkv_proj.weight"
    assert froms[1:] == [r.sources[0] for r in load_spec(specs / "llama.yaml").weights][:-1]
    assert load_spec(child).weights[-1].when.text == "true"


def test_a_chain_of_three_resolves_and_reports_the_middle_file(specs):
    write(specs, "middle.yaml", "config:\n  sliding_window: {type: int, default: 8}\n",
          header="spec: 1\nname: middle\nextends: llama\n")
    child = write(specs, "child.yaml", """\
        blocks:
          attention:
            edits:
              - {update: y#1, set: {window: sliding_window}}
        """, header="spec: 1\nname: child\nextends: middle.yaml\n")
    spec = load_spec(child)
    assert spec.config["sliding_window"].default.text == "8"
    assert spec.sources.file_of(spec.config["sliding_window"].path) == str(specs / "middle.yaml")
    assert spec.sources.file_of(spec.config["vocab_size"].path) == str(specs / "llama.yaml")


def test_a_missing_parent_is_a_clear_error(specs):
    child = write(specs, "child.yaml", "", header="spec: 1\nname: child\nextends: lama\n")
    with pytest.raises(SpecError) as info:
        load_spec(child)
    (p,) = info.value.problems
    assert p.file == str(child) and p.line == 3
    assert "extends 'lama': no such spec (looked for" in p.message and "lama.yaml" in p.message


def test_a_cycle_is_a_clear_error(specs):
    write(specs, "a.yaml", "", header="spec: 1\nname: a\nextends: b\n")
    write(specs, "b.yaml", "", header="spec: 1\nname: b\nextends: a\n")
    with pytest.raises(SpecError, match=r"extends forms a cycle: a.yaml -> b.yaml -> a.yaml"):
        load_spec(specs / "a.yaml")
    write(specs, "self.yaml", "", header="spec: 1\nname: me\nextends: self\n")
    with pytest.raises(SpecError, match=r"cycle: self.yaml -> self.yaml"):
        compile_spec(specs / "self.yaml", specs / "out")


def test_parents_outside_the_allowed_directories_are_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(LLAMA, outside / "llama.yaml")
    home = tmp_path / "mine"
    home.mkdir()
    child = write(home, "child.yaml", "", header="spec: 1\nname: child\nextends: ../elsewhere/llama.yaml\n")
    with pytest.raises(SpecError, match="points outside the allowed directories"):
        load_spec(child)


def test_a_bare_name_resolves_next_to_the_child_and_the_package_specs_dir_is_allowed(tmp_path):
    package_specs = Path("specs").resolve()
    child = write(tmp_path, "child.yaml", "", header=f"spec: 1\nname: child\nextends: {package_specs}/llama.yaml\n")
    assert load_spec(child).data["blocks"] == load_spec(LLAMA).data["blocks"]


def test_a_bare_name_from_a_users_own_folder_falls_back_to_the_shipped_specs(tmp_path):
    mine = write(tmp_path, "mine.yaml", "", header="spec: 1\nname: mine\nextends: llama\n")
    spec = load_spec(mine)
    assert spec.data["blocks"] == load_spec(LLAMA).data["blocks"]
    assert spec.sources.file_of(spec.config["vocab_size"].path) == str(Path("specs/llama.yaml").resolve())
    # a spec of that name next to the child comes first
    shutil.copy(LLAMA, tmp_path / "llama.yaml")
    assert load_spec(mine).sources.file_of(spec.config["vocab_size"].path) == str(tmp_path / "llama.yaml")


def test_a_bare_name_found_nowhere_lists_every_place_looked(tmp_path):
    lost = write(tmp_path, "lost.yaml", "", header="spec: 1\nname: lost\nextends: lama\n")
    with pytest.raises(SpecError) as info:
        load_spec(lost)
    message = info.value.problems[0].message
    assert f"looked for {tmp_path}/lama.yaml and {Path('specs').resolve()}/lama.yaml" in message
    assert "the shipped specs are" in message and "llama" in message


def test_the_parent_must_be_a_name_or_path(specs):
    child = write(specs, "child.yaml", "", header="spec: 1\nname: child\nextends: [llama]\n")
    with pytest.raises(SpecError, match="extends must be a spec name"):
        load_spec(child)


def test_a_child_needs_its_own_name(specs):
    child = write(specs, "child.yaml", "", header="spec: 1\nextends: llama\n")
    with pytest.raises(SpecError, match="needs its own name"):
        load_spec(child)


def test_plain_data_with_extends_is_refused():
    with pytest.raises(SpecError, match="extends is resolved when a spec is loaded from its file"):
        spec_from_data({"extends": "llama", "spec": 1})


def test_editing_the_parent_invalidates_the_compiled_child(specs):
    child = write(specs, "child.yaml", "")
    out = specs / "out"
    first = compile_spec(child, out)
    assert not first.cache_hit and compile_spec(child, out).cache_hit
    parent = specs / "llama.yaml"
    parent.write_text(parent.read_text().replace("float = 1e-6", "float = 1e-5"))
    again = compile_spec(child, out)
    assert not again.cache_hit
    assert again.spec.data["config"]["rms_norm_eps"] == "float = 1e-5"
    assert str(parent) in again.manifest["parents"]


def test_the_artifact_stores_the_resolved_spec(tmp_path):
    import json
    result = compile_spec("specs/mistral.yaml", tmp_path / "m")
    stored = json.loads((result.directory / "spec.json").read_text())
    assert stored["extends"] == ["llama.yaml"] and "extends" not in stored["spec"]
    assert stored["spec"] == load_spec("specs/mistral.yaml").data


@pytest.mark.parametrize("name", ["mistral", "qwen2", "qwen3", "roberta", "t5_v1_1"])
def test_resolved_output_loads_back_to_the_same_spec(tmp_path, name):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["compile", f"specs/{name}.yaml", "--resolved"]) == 0
    text = buffer.getvalue()
    assert "extends" not in text.split("\n", 1)[1]
    data, sources = load_yaml(tmp_path / "resolved.yaml", text=text)
    assert spec_from_data(data, sources).data == load_spec(f"specs/{name}.yaml").data
