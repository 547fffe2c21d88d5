"""`graphspec diff`: a semantic diff of two architectures, pinned for the family pairs."""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from compiler.diff import diff_specs
from compiler.spec import load_spec
from tools.cli import main
from tools.diff_format import render_text

LLAMA_MISTRAL = """\
llama (specs/llama.yaml) -> mistral (specs/mistral.yaml)
matches:
  ~ model_type: [llama] -> [mistral]
  ~ architectures: [LlamaForCausalLM] -> [MistralForCausalLM]
config:
  + sliding_window: int from sliding_window, default null
checks:
  + sliding_window == null or sliding_window > 0
block attention:
  ~ op y = attention(q, k, v, causal=true, scale=head_dim ** -0.5, dropout=attention_dropout, window=sliding_window): +window=sliding_window
"""

LLAMA_QWEN2 = """\
llama (specs/llama.yaml) -> qwen2 (specs/qwen2.yaml)
matches:
  ~ model_type: [llama] -> [qwen2]
  ~ architectures: [LlamaForCausalLM] -> [Qwen2ForCausalLM]
config:
  + use_sliding_window: bool from use_sliding_window, default false
  - attention_bias: bool from attention_bias, default false
checks:
  + not use_sliding_window
block attention:
  ~ param q_proj: bias attention_bias -> true
  ~ param k_proj: bias attention_bias -> true
  ~ param v_proj: bias attention_bias -> true
  ~ param o_proj: bias attention_bias -> false
"""


BERT_ROBERTA = """\
bert (specs/bert.yaml) -> roberta (specs/roberta.yaml)
matches:
  ~ model_type: [bert] -> [roberta]
  ~ architectures: [BertModel] -> [RobertaModel]
config:
  + padding_idx: int from pad_token_id, default 1
block model:
  + op real = not_equal(input_ids, value=padding_idx)
  + op pos = cumsum(real, dim=1)
  + op pos = mul(pos, real)
  + op pos = add_scalar(pos, value=padding_idx)
  - op pos = positions(input_ids)
heads:
  ~ base_prefix 'bert.' -> 'roberta.'
  ~ base: architectures [BertModel] -> [RobertaModel]
  ~ masked_lm: architectures [BertForMaskedLM, BertForPreTraining] -> [RobertaForMaskedLM]
  ~ sequence_classification: architectures [BertForSequenceClassification] -> [RobertaForSequenceClassification]
  + sequence_classification: op first = dropout(first, p=classifier_dropout if classifier_dropout != null else hidden_dropout)
  ~ token_classification: architectures [BertForTokenClassification] -> [RobertaForTokenClassification]
  ~ question_answering: architectures [BertForQuestionAnswering] -> [RobertaForQuestionAnswering]
weights:
  + 7 rules: lm_head.dense.{t}, lm_head.layer_norm.{t}, lm_head.decoder.weight, lm_head.bias, lm_head.decoder.bias, classifier.dense.{t}, classifier.out_proj.{t}
"""

T5_V1_1 = """\
t5 (specs/t5.yaml) -> t5_v1_1 (specs/t5_v1_1.yaml)
checks:
  + feed_forward_proj == 'gated-gelu'
  - feed_forward_proj == 'relu'
block feed_forward:
  + param wi_0: linear: [d_model, d_ff], bias: false
  + param wi_1: linear: [d_model, d_ff], bias: false
  - param wi: linear: [d_model, d_ff], bias: false
  ~ graph 4 -> 6 lines (40% aligned); -relu; +gelu, linear, mul; 1 line(s) re-wired
"""


def run(capsys, *args) -> tuple[int, str]:
    code = main(["diff", *args])
    return code, capsys.readouterr().out


def test_llama_to_mistral_says_it_adds_a_sliding_window(capsys):
    code, out = run(capsys, "specs/llama.yaml", "specs/mistral.yaml")
    assert code == 1
    assert out == LLAMA_MISTRAL


def test_llama_to_qwen2_says_q_k_v_gain_biases(capsys):
    code, out = run(capsys, "specs/llama.yaml", "specs/qwen2.yaml")
    assert code == 1
    assert out == LLAMA_QWEN2


@pytest.mark.skipif(not Path("specs/gpt2.yaml").exists(), reason="specs/gpt2.yaml comes with the families branch")
def test_llama_to_gpt2_is_a_short_structured_summary(capsys):
    code, out = run(capsys, "specs/llama.yaml", "specs/gpt2.yaml")
    assert code == 1
    lines = out.splitlines()
    assert len(lines) <= 40 and max(len(line) for line in lines) <= 200
    sections = [line for line in lines if not line.startswith(" ")]
    assert sections == ["llama (specs/llama.yaml) -> gpt2 (specs/gpt2.yaml)", "matches:", "config:", "checks:",
                        "block attention:", "block mlp:", "block decoder_layer:", "block model:", "heads:", "weights:"]
    assert "  - 2 inputs: cos, sin" in lines                       # no RoPE: the layers take no cos/sin
    assert any(line.startswith("  ~ graph ") and "-rope x2" in line for line in lines)
    assert any(line.startswith("  ~ graph ") and "+layer_norm x2" in line and "-rms_norm x2" in line for line in lines)
    assert any(line.startswith("  ~ graph ") and "+dropout, gelu" in line and "silu" in line for line in lines)
    assert any(line.startswith("  + ") and "wpe" in line for line in lines)    # learned positions


def test_the_same_spec_is_equal_with_exit_status_0(capsys):
    code, out = run(capsys, "specs/llama.yaml", "specs/llama.yaml")
    assert code == 0
    assert "no architectural difference" in out


def test_defaults_written_out_and_expressions_in_another_form_are_no_change(tmp_path, capsys):
    text = Path("specs/llama.yaml").read_text()
    text = text.replace("causal: true, scale: head_dim ** -0.5", "causal: true, scale: head_dim**-0.5, softcap: null")
    text = text.replace("int = hidden_size // num_heads", "{hf: [head_dim], type: int, default: (hidden_size) // num_heads}")
    (tmp_path / "same.yaml").write_text(text)
    code, out = run(capsys, "specs/llama.yaml", str(tmp_path / "same.yaml"))
    assert (code, out.splitlines()[1]) == (0, "  no architectural difference")


def test_json_output_is_complete_for_tools(capsys):
    code, out = run(capsys, "specs/llama.yaml", "specs/mistral.yaml", "--format", "json")
    data = json.loads(out)
    assert code == 1 and data["equal"] is False
    assert data["config"]["added"] == [{"name": "sliding_window", "hf": ["sliding_window"], "type": "int",
                                        "default": None}]
    (block,) = data["blocks"]["changed"]
    assert block["block"] == "attention"
    assert block["ops"]["changed"][0]["changes"] == {"window": [None, "sliding_window"]}
    assert data["weights"] == {"added": [], "removed": [], "changed": []}


def test_markdown_output_for_pull_requests(capsys):
    code, out = run(capsys, "specs/llama.yaml", "specs/qwen2.yaml", "--format", "markdown")
    assert code == 1
    assert out.startswith("### `llama` → `qwen2`\n")
    assert "**block attention**\n\n- *changed* `param q_proj: bias attention_bias -> true`" in out
    assert "\033[" not in out


def test_colour_only_on_request_or_a_terminal(capsys):
    _, plain = run(capsys, "specs/llama.yaml", "specs/mistral.yaml")
    assert "\033[" not in plain                       # captured output is not a terminal
    _, coloured = run(capsys, "specs/llama.yaml", "specs/mistral.yaml", "--color", "always")
    assert "\033[32m  + sliding_window" in coloured
    assert coloured.replace("\033[0m", "").replace("\033[1m", "").replace("\033[32m", "").replace(
        "\033[33m", "") == plain


def test_a_broken_spec_exits_2_with_its_position(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: 1\nname: bad\nextends: nothing\n")
    assert main(["diff", "specs/llama.yaml", str(bad)]) == 2
    assert f"{bad}:3" in capsys.readouterr().err


def test_a_renamed_block_is_matched_by_its_role(tmp_path):
    shutil.copy("specs/llama.yaml", tmp_path / "llama.yaml")
    (tmp_path / "renamed.yaml").write_text(textwrap.dedent("""\
        spec: 1
        name: renamed
        extends: llama
        blocks:
          mlp: {remove: true}
          ffn:
            inputs: {x: [B, S, hidden_size]}
            params:
              gate_proj: {linear: [hidden_size, intermediate_size], bias: mlp_bias}
              up_proj:   {linear: [hidden_size, intermediate_size], bias: mlp_bias}
              down_proj: {linear: [intermediate_size, hidden_size], bias: mlp_bias}
            graph:
              - gate: {op: linear, x: x, w: gate_proj}
              - up:   {op: linear, x: x, w: up_proj}
              - gate: {op: gelu, x: gate}
              - h:    {op: mul, a: gate, b: up}
              - y:    {op: linear, x: h, w: down_proj}
            outputs: [y]
          decoder_layer:
            params:
              mlp: {block: ffn}
        """))
    d = diff_specs(load_spec(tmp_path / "llama.yaml"), load_spec(tmp_path / "renamed.yaml"))
    assert d["blocks"]["added"] == [] and d["blocks"]["removed"] == []
    text = render_text(d)
    assert "block ffn (was mlp):\n  + op gate = gelu(gate)\n  - op gate = silu(gate)\n" in text
    (ffn,) = [b for b in d["blocks"]["changed"] if b["block"] == "ffn"]
    assert ffn["was"] == "mlp"
    assert ffn["ops"]["added"] == ["gate = gelu(gate)"] and ffn["ops"]["removed"] == ["gate = silu(gate)"]
    (layer,) = [b for b in d["blocks"]["changed"] if b["block"] == "decoder_layer"]
    assert layer["params"]["changed"] == [{"name": "mlp", "changes": {"block": ["mlp", "ffn"]}}]


def test_bert_to_roberta_is_positions_from_padding_and_renamed_tensors(capsys):
    code, out = run(capsys, "specs/bert.yaml", "specs/roberta.yaml")
    assert code == 1
    assert out == BERT_ROBERTA


def test_t5_to_v1_1_is_a_gated_gelu_feed_forward(capsys):
    code, out = run(capsys, "specs/t5.yaml", "specs/t5_v1_1.yaml")
    assert code == 1
    assert out == T5_V1_1


def test_a_change_only_in_a_head_is_a_difference(tmp_path, capsys):
    text = Path("specs/bert.yaml").read_text()
    text = text.replace("      - h:      {op: gelu, x: h}\n", "      - h:      {op: relu, x: h}\n")
    text = text.replace("  token_classification:\n    architectures: [BertForTokenClassification]\n",
                        "  tagging:\n    architectures: [BertForTokenClassification]\n")
    (tmp_path / "child.yaml").write_text(text)
    code, out = run(capsys, "specs/bert.yaml", str(tmp_path / "child.yaml"))
    assert code == 1
    assert out.splitlines()[1:] == [
        "heads:",
        "  + tagging (new): architectures [BertForTokenClassification]; params: classifier; ops: dropout, linear",
        "  - token_classification: architectures [BertForTokenClassification]",
        "  + masked_lm: op h = relu(h)",
        "  - masked_lm: op h = gelu(h)",
    ]
    data = json.loads(run(capsys, "specs/bert.yaml", str(tmp_path / "child.yaml"), "--format", "json")[1])
    assert data["heads"]["changed"][0]["head"] == "masked_lm" and data["equal"] is False
