"""The quantize pass: the IR before and after it (which params it marks, with which role), what the
marks do to fusion and verify, what the artifact says (interface.json, manifest, model.py), and the
loader quantizing the marked modules: `graphspec compile --quant`, `from_pretrained(quantization=...)`."""
from __future__ import annotations

import json

import pytest
import torch

import runtime
from compiler.ir import Param
from compiler.passes import run_pipeline
from compiler.pipeline import compile_spec
from compiler.spec import load_spec
from compiler.verify import IRError, verify
from runtime.quant import QuantConfig, QuantLinear, quantize_model, save_quantized
from runtime.quant import linear as quant_linear
from tests.family_parity import random_ids
from tools.cli import main as cli

transformers = pytest.importorskip("transformers")
LLAMA, GPT2, MIXTRAL = "specs/llama.yaml", "specs/gpt2.yaml", "specs/mixtral.yaml"
SHAPE = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)


def marks(ir) -> dict[str, str | None]:
    """block.param -> its mark, for every param that is not a block."""
    return {f"{b.name}.{p.name}": p.quant for b in ir.blocks.values() for p in b.params.values() if p.kind != "block"}


def ir_after(spec: str, quant, until: str = "quantize"):
    return run_pipeline(load_spec(spec), {"quant": quant}, until=until, verify=True)


def test_before_the_pass_nothing_is_marked_and_after_it_every_linear_but_the_lm_head_is():
    before = ir_after(LLAMA, "int4", until="derive_contract")
    after = ir_after(LLAMA, "int4")
    assert set(marks(before).values()) == {None} and before.quantization is None
    got = {k: v for k, v in marks(after).items() if v is not None}
    assert got == {f"attention.{p}": "linear" for p in ("q_proj", "k_proj", "v_proj", "o_proj")} | \
                  {f"mlp.{p}": "linear" for p in ("gate_proj", "up_proj", "down_proj")}
    assert after.quantization == QuantConfig.parse("int4").to_dict()
    # the pass only marks: the graph is the same op for op
    assert {b: [n.op for n in blk.order()] for b, blk in after.blocks.items()} == \
           {b: [n.op for n in blk.order()] for b, blk in before.blocks.items()}


def test_the_output_embedding_is_found_by_its_rows_or_its_tie_and_marked_only_when_not_skipped():
    everything = {"bits": 8, "modules_to_not_convert": [], "quantize_embedding": True}
    llama = marks(ir_after(LLAMA, everything))
    assert llama["model.lm_head"] == "lm_head" and llama["model.embed"] == "embedding"
    assert llama["decoder_layer.attn_norm"] is None          # a norm's weight is not read by a linear
    gpt2 = marks(ir_after(GPT2, everything))
    assert [k for k, v in gpt2.items() if v == "lm_head"] == ["model.lm_head"]


def test_experts_are_marked_as_experts_and_the_router_found_by_its_outputs_stays_float_unless_asked():
    default = marks(ir_after(MIXTRAL, "int4"))
    assert {default[f"experts.{w}"] for w in ("w1", "w2", "w3")} == {"experts"}
    assert default["moe.gate"] is None and default["attention.q_proj"] == "linear"
    everything = marks(ir_after(MIXTRAL, {"bits": 8, "modules_to_not_convert": []}))
    assert everything["moe.gate"] == "router" and everything["model.lm_head"] == "lm_head"
    only_router = marks(ir_after(MIXTRAL, {"bits": 8, "modules_to_not_convert": ["router"]}))
    assert only_router["moe.gate"] is None and only_router["model.lm_head"] == "lm_head"


def test_verify_refuses_experts_marked_as_a_linear():
    ir = ir_after(MIXTRAL, "int8")
    ir.blocks["experts"].params["w1"].quant = "linear"
    with pytest.raises(IRError, match="'w1', marked quantized as linear"):
        verify(ir)


def test_skip_patterns_over_path_templates_unmark_at_compile_time_and_concrete_indexes_wait_for_the_load():
    ir = ir_after(LLAMA, {"bits": 4, "modules_to_not_convert": ["lm_head", "layers.*.mlp.*", "layers.0.*"]})
    got = marks(ir)
    assert {got[f"mlp.{p}"] for p in ("gate_proj", "up_proj", "down_proj")} == {None}
    assert got["attention.q_proj"] == "linear"                # layers.0 is one instance: decided per module at load


def test_linears_kept_in_different_formats_are_not_fused_into_one_matmul():
    ir = ir_after(LLAMA, {"bits": 4, "modules_to_not_convert": ["lm_head", "layers.*.attn.k_proj"]}, until="fuse")
    attention = ir.blocks["attention"]
    fused = [p for p in attention.params.values() if p.kind == "fused_linear"]
    assert [p.members for p in fused] == [["q_proj", "v_proj"]] and fused[0].quant == "linear"
    refused = [d for d in ir.decisions if d.rule == "projection" and not d.taken and d.block == "attention"]
    assert any("k_proj" in d.reason and "one matmul holds one format" in d.reason for d in refused)


def test_verify_refuses_a_mark_on_a_param_no_linear_reads():
    ir = ir_after(LLAMA, "int8")
    ir.blocks["decoder_layer"].params["attn_norm"].quant = "linear"
    with pytest.raises(IRError, match="'attn_norm', marked quantized as linear"):
        verify(ir)


def test_verify_refuses_a_fused_param_whose_members_carry_other_marks():
    ir = ir_after(LLAMA, "int8", until="fuse")
    qkv: Param = next(p for p in ir.blocks["attention"].params.values() if p.kind == "fused_linear")
    ir.blocks["attention"].params[qkv.members[0]].quant = None
    with pytest.raises(IRError, match=f"fused param '{qkv.name}' is marked linear"):
        verify(ir)


def test_the_artifact_says_which_modules_are_quantized(tmp_path):
    config = QuantConfig.parse({"bits": 4, "group_size": 64, "sym": False}).to_dict()
    result = compile_spec(LLAMA, tmp_path / "q", {"quant": config})
    interface = json.loads((result.directory / "interface.json").read_text())
    want = {f"layers.{{i}}.{m}": "linear" for m in ("attn.qkv_proj", "attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")}
    assert interface["quantization"] == {"config": config, "params": want}
    assert result.manifest["quantized"] == want and result.manifest["options"]["quant"] == config
    qkv = next(line for line in (result.directory / "model.py").read_text().splitlines() if "self.qkv_proj =" in line)
    assert "quantized int4-g64-asym (linear)" in qkv
    plain = json.loads((compile_spec(LLAMA, tmp_path / "f").directory / "interface.json").read_text())
    assert plain["quantization"] is None


def test_compile_with_quant_on_the_command_line(tmp_path, capsys):
    assert cli(["compile", LLAMA, "-o", str(tmp_path / "a"), "--quant", "int8"]) == 0
    assert "quant:  8 bits: layers.{i}.attn.qkv_proj" in capsys.readouterr().out
    assert json.loads((tmp_path / "a" / "interface.json").read_text())["quantization"]["config"]["bits"] == 8
    assert cli(["compile", LLAMA, "-o", str(tmp_path / "b"), "--quant", '{"bits": 4, "group_size": 48}']) == 2
    assert "'group_size' must be one of (32, 64, 128)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).eval().save_pretrained(folder)
    return folder


def test_from_pretrained_quantizes_the_marked_modules_as_it_loads(checkpoint):
    model = runtime.from_pretrained(checkpoint, quantization="int8")
    assert model.interface.quantization.config == QuantConfig.parse("int8")
    assert all(isinstance(layer.attn.qkv_proj, QuantLinear) for layer in model.net.layers)
    assert not isinstance(model.net.lm_head, QuantLinear)
    ids = random_ids(SHAPE["vocab_size"], 2, 9)
    # the same numbers as quantizing the float model afterwards
    after = quantize_model(runtime.from_pretrained(checkpoint), "int8")
    assert model.load_report["quantized"] == after.load_report["quantized"]
    torch.testing.assert_close(model(ids).logits, after(ids).logits, rtol=0, atol=0)


def test_quantization_config_is_the_same_argument_under_transformers_name(checkpoint):
    model = runtime.from_pretrained(checkpoint, quantization_config={"bits": 8})
    assert model.quantization == QuantConfig.parse("int8")
    assert isinstance(model.net.layers[0].mlp.down_proj, QuantLinear)
    with pytest.raises(ValueError, match="quantization and quantization_config .* disagree"):
        runtime.from_pretrained(checkpoint, quantization="int4", quantization_config={"bits": 8})


def test_a_checkpoint_quantized_by_another_library_is_refused_by_its_config_before_any_weight_is_read(tmp_path):
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(runtime.CheckpointError, match=r"config.json: quantization_config.quant_method 'gptq': its "
                                                       r"weights are stored in another library's quantized format"):
        runtime.from_pretrained(tmp_path)


def test_a_skip_pattern_with_a_layer_index_keeps_that_layer_in_float(checkpoint):
    model = runtime.from_pretrained(checkpoint, quantization={"bits": 4, "modules_to_not_convert": ["lm_head", "layers.0.*"]})
    assert not isinstance(model.net.layers[0].mlp.down_proj, QuantLinear)
    assert isinstance(model.net.layers[1].mlp.down_proj, QuantLinear)
    assert not any(p.startswith("layers.0.") for p in model.load_report["quantized"])


def test_a_saved_quantized_folder_loads_through_from_pretrained_without_quantizing_again(checkpoint, tmp_path,
                                                                                        monkeypatch):
    model = runtime.from_pretrained(checkpoint, quantization="int4")
    ids = random_ids(SHAPE["vocab_size"], 1, 7)
    want = model(ids).logits
    save_quantized(model, tmp_path)
    monkeypatch.setattr(quant_linear, "quantize", lambda *a, **k: pytest.fail("quantized again while loading"))
    loaded = runtime.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(ids).logits, want, rtol=0, atol=0)
    assert loaded.quantization == QuantConfig.parse("int4")
    with pytest.raises(ValueError, match="already quantized"):
        runtime.from_pretrained(tmp_path, quantization="int8")


def test_a_gpt2_with_its_tied_head_loads_quantized_and_stays_close_to_fp32(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(tmp_path)
    ids = random_ids(300, 2, 9)
    want = runtime.from_pretrained(tmp_path)(ids).logits
    model = runtime.from_pretrained(tmp_path, quantization={"bits": 8, "modules_to_not_convert": []})
    assert model.load_report["quantized"]["lm_head"] == "lm_head"
    assert isinstance(model.net.h[1].mlp.c_fc, QuantLinear)
    cos = torch.nn.functional.cosine_similarity(model(ids).logits.flatten(1), want.flatten(1), dim=-1).min()
    assert cos >= 0.999, cos
