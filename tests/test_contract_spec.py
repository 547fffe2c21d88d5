"""The runtime contract as the compiler derives it: from the v1 table for specs that declare nothing,
from the v2 syntax (`mask`, `supplied`, `of`, `default`, `generate`) otherwise; bad declarations are
SpecErrors at their YAML line."""
from __future__ import annotations

from pathlib import Path

import pytest

from compiler.errors import SpecError
from compiler.passes import run_pipeline
from compiler.spec import load_spec
from tests.test_spec_errors import assert_at, errors_of

LLAMA = Path("specs/llama.yaml").read_text()
BERT = Path("specs/bert.yaml").read_text()


def contract(path):
    return run_pipeline(load_spec(path), until="derive_contract").contract


def edited(tmp_path, text: str, old: str, new: str, name="edited.yaml") -> tuple[Path, int]:
    assert old in text, old
    text = text.replace(old, new, 1)
    path = tmp_path / name
    path.write_text(text)
    return path, text[:text.index(new)].count("\n") + 1


def test_v1_specs_get_their_contract_from_the_table_of_input_names():
    llama = contract("specs/llama.yaml")
    assert [(i["name"], i["source"], i["seq"]) for i in llama.inputs] == [
        ("input_ids", "caller", "S"), ("position_ids", "positions", "S")]
    assert llama.masks == {"attention_mask": "S"}
    assert llama.generate == {"tokens": "input_ids", "seq": "S", "logits": "logits", "start": None,
                              "cache_width": "2 * (num_layers) * (num_kv_heads) * (head_dim)"}
    t5 = contract("specs/t5.yaml")
    assert t5.masks == {"attention_mask": "S_ENC", "decoder_attention_mask": "S"}
    assert t5.generate == {"tokens": "decoder_input_ids", "seq": "S", "logits": "logits",
                           "start": "decoder_start_token_id",
                           "cache_width": "2 * (num_decoder_layers) * (num_heads) * (d_kv)"}
    assert t5.static == [["encoder"], ["dec_layers", "*", "cross_kv"]]
    bert = contract("specs/bert.yaml")
    assert bert.generate is None and "bidirectional encoder" in bert.no_generate and "bert.yaml:53" in bert.no_generate
    assert [(i["name"], i["source"], i.get("value")) for i in bert.inputs] == [
        ("input_ids", "caller", None), ("token_type_ids", "fill", 0)]
    vit = contract("specs/vit.yaml")
    assert vit.inputs[0]["dtype"] == "float" and vit.inputs[0]["seq"] is None and vit.masks == {}


def test_context_ops_run_along_the_model_sequence_their_block_is_bound_to():
    t5 = contract("specs/t5.yaml")
    by_block = {block: seq for (block, _), seq in t5.sequences.items()}
    # the encoder's blocks say S, bound to the model's S_ENC by the call and repeat lines
    # the attention block is written once: its encoder instance runs along S_ENC, its decoder one along S
    assert by_block == {"model": "S", "encoder": "S_ENC", "attention": "S_ENC", "attention_2": "S",
                        "cross_attention": "S_ENC"}
    assert set(contract("specs/vit.yaml").sequences.values()) == {None}


def test_a_block_bound_to_two_sequences_names_both_uses(tmp_path):
    child = tmp_path / "t5_shared.yaml"
    child.write_text(f"spec: 1\nname: t5_shared\nextends: {Path('specs/t5.yaml').resolve()}\nblocks:\n"
                     "  encoder_layer:\n    params:\n      attn: {block: attention, with: {causal: true, encoder_keys: false}}\n")
    with pytest.raises(SpecError) as info:
        contract(child)
    message = str(info.value)
    t5 = Path("specs/t5.yaml").read_text().splitlines()
    attention = next(i for i, line in enumerate(t5, 1) if "causal: causal, encoder_keys: encoder_keys" in line)
    encoder_call = next(i for i, line in enumerate(t5, 1) if "{op: call, block: attn, x: h, bias: bias}" in line)
    decoder_call = next(i for i, line in enumerate(t5, 1) if "{op: call, block: self_attn" in line)
    assert f"t5.yaml:{attention}:" in message
    assert f"S_ENC where the block is used at t5.yaml:{encoder_call}" in message
    assert f"S where it is used at t5.yaml:{decoder_call}" in message


@pytest.mark.parametrize("old,new,where,words", [
    ("position_ids: {shape: [B, S], dtype: int}", "position_ids: {shape: [B, S], dtype: int, supplied: positions, mask: pm}",
     "model.inputs.position_ids.mask", ["belongs on an input the caller passes"]),
    ("input_ids:    {shape: [B, S], dtype: int}", "input_ids:    {shape: [B, S], dtype: int, mask: position_ids}",
     "model.inputs.input_ids.mask", ["would shadow a model input"]),
    ("input_ids:    {shape: [B, S], dtype: int}", "input_ids:    {shape: [B, S], dtype: int, mask: logits_to_keep}",
     "model.inputs.input_ids.mask", ["would shadow a runtime argument"]),
    ("position_ids: {shape: [B, S], dtype: int}", "position_ids: {shape: [B, S], dtype: int, supplied: positions, of: ids}",
     "model.inputs.position_ids.of", ["'of: ids' must name a model input", "input_ids"]),
    ("position_ids: {shape: [B, S], dtype: int}", "position_ids: {shape: [B, S], dtype: int, of: input_ids}",
     "model.inputs.position_ids.of", ["goes with 'supplied'"]),
    ("position_ids: {shape: [B, S], dtype: int}", "position_ids: {shape: [B, S], dtype: int, default: 0.5}",
     "model.inputs.position_ids.default", ["must be a number of its type"]),
    ("position_ids: {shape: [B, S], dtype: int}", "position_ids: {shape: [B, S], dtype: int, supplied: rotary}",
     "model.inputs.position_ids.supplied", ["supplied must be one of 'positions', 'key_positions' or null, got 'rotary'"]),
    ("  outputs: [logits]\n\n#", "  outputs: [logits]\n  generate: {tokens: position_ids, logits: logits}\n\n#",
     "model.generate.tokens", ["tokens must name a model input the caller passes", "input_ids"]),
    ("  outputs: [logits]\n\n#", "  outputs: [logits]\n  generate: {tokens: input_ids, logits: hidden}\n\n#",
     "model.generate.logits", ["logits must name a rank-3 output", "got 'hidden'"]),
    ("  outputs: [logits]\n\n#", "  outputs: [logits]\n  generate: {tokens: input_ids, logits: logits, start: bos}\n\n#",
     "model.generate.start", ["unknown config name(s) bos", "first caller input is the tokens 'input_ids'"]),
])
def test_bad_contract_declarations_are_spec_errors_at_their_line(tmp_path, old, new, where, words):
    path, line = edited(tmp_path, LLAMA, old, new)
    line += new[:new.index(where.split(".")[-1] + ":")].count("\n") if "\n" in new else 0
    assert_at(errors_of(path, tmp_path), path, line, where, *words)


def test_declaring_generate_on_a_bidirectional_encoder_says_why_it_cannot(tmp_path):
    path, line = edited(tmp_path, BERT, "  outputs: [last_hidden_state]\n\nheads:",
                        "  outputs: [last_hidden_state]\n  generate: {tokens: input_ids, logits: last_hidden_state}\n\nheads:")
    assert_at(errors_of(path, tmp_path), path, line + 1, "model.generate",
              "generate is declared, but it is a bidirectional encoder", f"{path.name}:53")


def test_encoder_keys_must_agree_with_the_sequence_the_keys_run_along(tmp_path):
    t5 = Path("specs/t5.yaml").read_text()
    # the decoder's instance of the attention block, told its keys come from the encoder
    path, _ = edited(tmp_path, t5, "with: {causal: true, encoder_keys: false}", "with: {causal: true, encoder_keys: true}")
    line = next(i for i, text in enumerate(t5.splitlines(), 1) if "encoder_keys: encoder_keys" in text)
    assert_at(errors_of(path, tmp_path), path, line, "blocks.attention.graph[6].y.encoder_keys",
              "encoder_keys: true, but the keys run along S, the sequence generate extends")


def test_graphspec_diff_shows_contract_declarations(tmp_path, capsys):
    from tools.cli import main
    path, _ = edited(tmp_path, LLAMA, "input_ids:    {shape: [B, S], dtype: int}",
                     "input_ids:    {shape: [B, S], dtype: int, mask: attention_mask}")
    path, _ = edited(tmp_path, path.read_text(), "  outputs: [logits]\n\n#",
                     "  outputs: [logits]\n  generate: {tokens: input_ids, logits: logits}\n\n#", name="declared.yaml")
    assert main(["diff", "specs/llama.yaml", str(path), "--color", "never"]) == 1
    shown = capsys.readouterr().out
    assert "~ input input_ids: +mask=attention_mask" in shown
    assert "generate null -> {tokens: input_ids, logits: logits, start: null}" in shown
