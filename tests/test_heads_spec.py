"""The heads section of the spec language: what a head sees, and the errors an author gets."""
from __future__ import annotations

from pathlib import Path

import pytest

from compiler.errors import SpecError
from compiler.passes import run_pipeline
from compiler.spec import load_spec

BERT = Path("specs/bert.yaml").read_text()


def problems(tmp_path, text: str) -> str:
    path = tmp_path / "bert.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        run_pipeline(load_spec(path), until="check_weight_rules")
    return str(err.value)


def test_every_encoder_spec_lowers_with_its_heads():
    for name, heads in {"bert": 5, "roberta": 5, "distilbert": 5, "vit": 2}.items():
        ir = run_pipeline(load_spec(f"specs/{name}.yaml"), until="check_weight_rules")
        assert len(ir.heads) == heads and all(ir.head_block(h).role == "head" for h in ir.heads)


def test_a_head_sees_the_model_outputs_not_its_inner_values(tmp_path):
    text = BERT.replace("{op: linear, x: last_hidden_state, w: qa_outputs}", "{op: linear, x: pos, w: qa_outputs}")
    msg = problems(tmp_path, text)
    assert "undefined value 'pos'" in msg and "heads.question_answering.graph[0]" in msg


def test_a_head_param_may_not_shadow_a_model_param(tmp_path):
    text = BERT.replace("      qa_outputs: {linear: [hidden_size, 2], bias: true}",
                        "      word_embed: {linear: [hidden_size, 2], bias: true}")
    text = text.replace("w: qa_outputs}", "w: word_embed}")
    assert "head param 'word_embed' has the name of a model param" in problems(tmp_path, text)


def test_a_head_param_without_a_weight_rule_is_reported(tmp_path):
    text = BERT.replace('  - {from: "qa_outputs.{t}", to: "qa_outputs.{t}"}\n', "")
    assert "param 'qa_outputs.weight' is fed by no weight rule" in problems(tmp_path, text)


def test_a_weight_rule_needs_a_target_or_a_reason_to_ignore(tmp_path):
    text = BERT.replace('{from: "embeddings.position_ids", ignore: "a saved arange buffer; positions are computed at run time"}',
                        '{from: "embeddings.position_ids"}')
    rules = [line for line in text.split("weights:\n", 1)[1].splitlines() if line.startswith("  - ")]
    position = rules.index('  - {from: "embeddings.position_ids"}')
    msg = problems(tmp_path, text)
    assert f"weights[{position}]" in msg
    assert "a weight rule needs either 'to'" in msg
