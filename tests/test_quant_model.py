"""quantize_model on whole models: accuracy against fp32 on Transformers-initialised random Llamas,
tied tables quantized once, decode consistent with prefill, and quantized checkpoints saved and
reloaded without quantizing again.

Accuracy: int8 meets the issue's targets (logits cosine >= 0.999). int4 does not reach 0.99 on
random models whose weights are Gaussian (Transformers' init): 16 levels leave 8-10% relative
error per weight (g32 with zero points: 8.1%, symmetric with the extreme at level -8 about the same;
searching each group's clipping range for the least squared error only reaches 7.8%, and no 4-bit
scalar code does much better on Gaussian values), and every linear of every layer adds its share.
llama.cpp's own 4-bit files do no better on such a model: on the bench's 12-layer one, next-token
logits cosine with fp32 0.924 for q4_0 and 0.959 for q4_K_M (graphspec int4 0.946). Measured on the
4-layer model below, LM head in float (the default): g32 symmetric 0.974, g32 with zero points 0.978,
g64 symmetric 0.971, g128 0.966; keeping the first layer in float too (`modules_to_not_convert:
[lm_head, layers.0.*]`, the most sensitive one here: its errors pass through every later layer)
0.9875 with zero points. Quantizing the LM head too costs ~0.004. The int4 tests hold those levels,
which a wrong kernel or packing (cosine ~0) falls far below. Top-1 agreement is low on any random
model: its logits are nearly flat.
"""
from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models

import runtime
from compiler.pipeline import compile_spec
from runtime.errors import CheckpointError
from runtime.quant import load_quantized, quantize_model, save_quantized
from runtime.quant import convert, linear
from runtime.quant.linear import QuantEmbedding, QuantLinear
from tests.family_parity import random_ids

transformers = pytest.importorskip("transformers")
SHAPE = dict(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)


def hf_initialised(folder, **overrides):
    """A Llama as Transformers initialises it (_init_weights: normal(0, 0.02), norms 1), saved."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**SHAPE, **overrides})).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return hf_initialised(tmp_path_factory.mktemp("llama"), tie_word_embeddings=False)


@pytest.fixture(scope="module")
def tied_checkpoint(tmp_path_factory):
    return hf_initialised(tmp_path_factory.mktemp("llama_tied"), tie_word_embeddings=True)


@pytest.fixture(scope="module")
def fp32_logits(checkpoint):
    return runtime.from_pretrained(checkpoint)(random_ids(1000, 2, 48)).logits


def agreement(got, want):
    cos = torch.nn.functional.cosine_similarity(got.flatten(1).double(), want.flatten(1).double(), dim=-1).min().item()
    top1 = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    return cos, top1


@pytest.mark.parametrize("scheme, min_cos, min_top1", [
    ("int8", 0.999, 0.95),                                          # measured 0.99986
    ("int4", 0.97, 0.4),                                            # measured 0.974, 0.50
    ({"bits": 4, "group_size": 32, "sym": False}, 0.97, 0.4),       # measured 0.978, 0.51
    ({"bits": 4, "group_size": 128, "sym": False}, 0.96, 0.3),      # measured 0.966, 0.33
    ({"bits": 4, "group_size": 32, "sym": False, "modules_to_not_convert": ["lm_head", "layers.0.*"]},
     0.985, 0.55),                                                  # measured 0.9875, 0.67
    ({"bits": 4, "modules_to_not_convert": []}, 0.965, 0.35),       # the LM head too: measured 0.970, 0.45
    ("w8a8", 0.999, 0.95),                                          # int8 activations too
    ({"bits": 4, "act_bits": 8, "lm_head_bits": 8, "modules_to_not_convert": []}, 0.97, 0.4),  # measured 0.974, 0.49
])
def test_quantized_logits_agree_with_fp32_on_a_transformers_initialised_llama(checkpoint, fp32_logits, scheme,
                                                                               min_cos, min_top1):
    model = quantize_model(runtime.from_pretrained(checkpoint), scheme)
    cos, top1 = agreement(model(random_ids(1000, 2, 48)).logits, fp32_logits)
    assert cos >= min_cos and top1 >= min_top1, (cos, top1)


def test_bf16_model_quantized_to_int8_stays_within_bf16_of_fp32(checkpoint, fp32_logits):
    model = quantize_model(runtime.from_pretrained(checkpoint, dtype="bfloat16"), "int8")
    out = model(random_ids(1000, 2, 48)).logits
    assert out.dtype == torch.bfloat16
    cos, _ = agreement(out, fp32_logits)
    assert cos >= 0.999


def test_every_linear_is_quantized_the_lm_head_when_not_skipped_and_the_embedding_on_request(checkpoint):
    model = quantize_model(runtime.from_pretrained(checkpoint), "int4")
    kinds = model.load_report["quantized"]
    assert set(kinds.values()) == {"linear"} and len(kinds) == 4 * 4      # qkv, o, gate_up, down per layer
    assert isinstance(model.net.layers[3].mlp.down_proj, QuantLinear) and not isinstance(model.net.lm_head, QuantLinear)
    assert model.quantization_config["bits"] == 4

    everything = quantize_model(runtime.from_pretrained(checkpoint), {"bits": 4, "modules_to_not_convert": []})
    assert everything.load_report["quantized"]["lm_head"] == "lm_head"
    assert isinstance(everything.net.lm_head, QuantLinear)

    kept = quantize_model(runtime.from_pretrained(checkpoint), {"bits": 8, "quantize_embedding": True,
                                                                 "modules_to_not_convert": ["lm_head", "layers.0.*"]})
    kinds = kept.load_report["quantized"]
    assert "lm_head" not in kinds and kinds["embed"] == "embedding"
    assert not any(p.startswith("layers.0.") for p in kinds) and "layers.1.attn.qkv_proj" in kinds
    assert isinstance(kept.net.embed, QuantEmbedding) and not isinstance(kept.net.lm_head, QuantLinear)


def test_the_lm_head_takes_its_own_bits_and_a_tie_then_keeps_two_tables(tied_checkpoint):
    model = quantize_model(runtime.from_pretrained(tied_checkpoint), {"bits": 4, "lm_head_bits": 8, "act_bits": 8,
                                                                      "quantize_embedding": True,
                                                                      "modules_to_not_convert": []})
    assert model.net.lm_head.scheme.name == "int8-a8"
    assert model.net.embed.scheme.name == "int4-g32-sym-a8"
    assert model.net.layers[0].mlp.down_proj.scheme.name == "int4-g32-sym-a8"
    assert model.net.lm_head.qweight.dtype == torch.int8 and model.net.embed.qweight.dtype == torch.uint8


def test_a_tied_embedding_and_lm_head_share_one_quantized_table(tied_checkpoint):
    model = quantize_model(runtime.from_pretrained(tied_checkpoint), {"bits": 8, "quantize_embedding": True,
                                                                      "modules_to_not_convert": []})
    assert model.net.lm_head.qweight is model.net.embed.qweight
    assert model.net.lm_head.scales is model.net.embed.scales
    ids = random_ids(1000, 1, 5)
    rows = model.net.embed(ids)
    torch.testing.assert_close(rows, model.net.embed.dequantized()[ids], rtol=0, atol=0)


def test_greedy_decoding_equals_repeated_full_forwards_of_the_quantized_model(checkpoint):
    model = quantize_model(runtime.from_pretrained(checkpoint), "int4")
    prompt = random_ids(1000, 1, 9)
    tokens = model.generate(prompt, max_new_tokens=6)
    ids = prompt
    for _ in range(6):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert tokens.tolist() == ids.tolist()


@pytest.fixture(scope="module")
def artifact():
    return compile_spec("specs/llama.yaml").directory


@pytest.mark.parametrize("scheme", ["int8", {"bits": 4, "group_size": 64, "sym": False, "quantize_embedding": True,
                                              "modules_to_not_convert": []},
                                    {"bits": 4, "act_bits": 8, "lm_head_bits": 8, "modules_to_not_convert": []}])
def test_a_saved_quantized_model_reloads_with_the_same_logits_without_quantizing(tied_checkpoint, artifact, tmp_path,
                                                                                  monkeypatch, scheme):
    model = quantize_model(runtime.from_pretrained(tied_checkpoint), scheme)
    ids = random_ids(1000, 2, 12)
    want = model(ids).logits
    save_quantized(model, tmp_path)

    monkeypatch.setattr(linear, "quantize", lambda *a, **k: pytest.fail("quantized again while loading"))
    loaded = load_quantized(tmp_path, artifact)
    torch.testing.assert_close(loaded(ids).logits, want, rtol=0, atol=1e-5)
    assert loaded.quantization_config == model.quantization_config
    assert loaded.load_report["quantized"] == model.load_report["quantized"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"] == model.quantization_config


def test_a_saved_quantized_checkpoint_names_its_scheme_and_stores_shared_tables_once(tied_checkpoint, tmp_path):
    from runtime.safetensors_io import SafetensorsFile
    model = quantize_model(runtime.from_pretrained(tied_checkpoint), {"bits": 4, "quantize_embedding": True,
                                                                      "modules_to_not_convert": []})
    save_quantized(model, tmp_path)
    file = SafetensorsFile(tmp_path / "model.safetensors")
    assert file.metadata["format"] == "graphspec-quantized"
    assert json.loads(file.metadata["quantization_config"])["group_size"] == 32
    assert file.tensors["embed.qweight"].dtype == "U8" and file.tensors["embed.scales"].dtype == "F16"
    assert "lm_head.qweight" not in file.tensors
    assert json.loads(file.metadata["tied"])["lm_head.qweight"] == "embed.qweight"


def _rewrite(path, edit_tensors=None, edit_metadata=None):
    from safetensors.torch import load_file, safe_open, save_file
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    if edit_tensors:
        edit_tensors(tensors)
    if edit_metadata:
        edit_metadata(metadata)
    save_file(tensors, str(path), metadata=metadata)


@pytest.fixture
def saved(checkpoint, tmp_path):
    save_quantized(quantize_model(runtime.from_pretrained(checkpoint), {"bits": 8, "modules_to_not_convert": []}), tmp_path)
    return tmp_path


@pytest.mark.parametrize("edit, message", [
    (dict(edit_metadata=lambda m: m.update(format="pt")), "not a graphspec quantized checkpoint"),
    (dict(edit_metadata=lambda m: m.pop("tied")), "missing keys: tied"),
    (dict(edit_metadata=lambda m: m.update(quantization_config='{"bits": 5}')), "quantization_config: 'bits' must be 8 or 4"),
    (dict(edit_metadata=lambda m: m.update(config="{")), "metadata 'config' is not valid JSON"),
    (dict(edit_metadata=lambda m: m.update(modules='{"layers.9.mlp": "linear"}')), "names 'layers.9.mlp'"),
    (dict(edit_metadata=lambda m: m.update(config=json.dumps({**json.loads(m["config"]), "num_layers": 10**9}))),
     "metadata 'config': the model it describes has"),
    (dict(edit_metadata=lambda m: m.update(config=json.dumps({**json.loads(m["config"]), "hidden_size": -8}))),
     r"metadata 'config': sizes that make no model"),
    (dict(edit_tensors=lambda t: t.update({"lm_head.scales": t["lm_head.scales"][:10]})),
     r"lm_head.scales: expected \[1000\] torch.float32, got \[10\] F32"),
    (dict(edit_tensors=lambda t: t.pop("layers.0.mlp.down_proj.qweight")), "missing: layers.0.mlp.down_proj.qweight"),
])
def test_a_damaged_quantized_checkpoint_is_an_error_naming_what_is_wrong(saved, artifact, edit, message):
    _rewrite(saved / "model.safetensors", **edit)
    with pytest.raises(CheckpointError, match=message):
        load_quantized(saved, artifact)


def test_loading_with_another_spec_s_artifact_is_refused(saved):
    gpt2 = compile_spec("specs/gpt2.yaml").directory
    with pytest.raises(CheckpointError, match="saved from spec 'llama', but the artifact .* is spec 'gpt2'"):
        load_quantized(saved, gpt2)


def test_saving_a_model_that_is_not_quantized_is_refused(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="not quantized"):
        save_quantized(runtime.from_pretrained(checkpoint), tmp_path)


def test_the_plan_names_the_output_embedding_by_shape_not_by_name(checkpoint):
    model = runtime.from_pretrained(checkpoint)
    plan = convert.plan(model.net, convert.QuantConfig.parse({"bits": 8, "modules_to_not_convert": []}))
    assert [p for p, k in plan.items() if k == "lm_head"] == ["lm_head"]


def test_a_width_no_int4_group_divides_is_refused_naming_the_module_and_the_fixes_and_changes_nothing(tmp_path):
    folder = hf_initialised(tmp_path, hidden_size=80, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                            num_hidden_layers=2)
    model = runtime.from_pretrained(folder)
    before = {n: type(m) for n, m in model.net.named_modules()}
    with pytest.raises(ValueError, match=r"layers\.0\.attn\.qkv_proj: 80 input features are not a multiple of the "
                                         r"int4 group size 32; no int4 group size \(32, 64, 128\) does: quantize to 8 "
                                         r"bits, or leave it in float \(modules_to_not_convert: \[\"layers\.\*\.attn\.qkv_proj\"\]\)"):
        quantize_model(model, "int4")
    assert {n: type(m) for n, m in model.net.named_modules()} == before and getattr(model, "quantization", None) is None
    # the down projections' 96 inputs take groups of 32, and the others stay float as asked
    kept = quantize_model(model, {"bits": 4, "modules_to_not_convert": ["lm_head", "layers.*.attn.*", "layers.*.mlp.gate_up_proj"]})
    assert set(kept.load_report["quantized"]) == {"layers.0.mlp.down_proj", "layers.1.mlp.down_proj"}


def test_quantize_embedding_keeps_a_table_the_format_cannot_hold_in_float_and_says_so(tmp_path):
    """T5's relative position bias is a lookup table as wide as its heads (4 here): int4 groups of 32
    cannot hold it; asked for every table, the others are quantized and that one is named."""
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1)
    transformers.T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"kept in float.*encoder\.rel_bias: 4 input features"):
        model = runtime.from_pretrained(tmp_path, quantization={"bits": 4, "quantize_embedding": True})
    assert set(model.load_report["kept_in_float"]) == {"encoder.rel_bias", "dec_bias"}
    assert model.load_report["quantized"]["shared"] == "embedding"
    assert not isinstance(model.net.encoder.rel_bias, QuantEmbedding)
    ids = random_ids(128, 2, 7)
    assert torch.isfinite(model(ids, decoder_input_ids=ids[:, :3]).logits).all()


def test_a_saved_quantized_encoder_decoder_reloads_in_eval_mode_with_its_generation_config_and_tokenizer(tmp_path):
    """T5 has dropout: a reloaded model left in training mode computed other logits each call; and the
    reloaded folder must carry what generate and the tokenizer read (decoder_start_token_id ...)."""
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1)
    transformers.T5ForConditionalGeneration(config).save_pretrained(tmp_path / "float")
    (tmp_path / "float" / "generation_config.json").write_text(json.dumps({"decoder_start_token_id": 0,
                                                                            "eos_token_id": 1, "max_new_tokens": 5}))
    Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(tmp_path / "float" / "tokenizer.json"))
    model = runtime.from_pretrained(tmp_path / "float", quantization="int8")
    ids = random_ids(128, 2, 7)
    save_quantized(model, tmp_path / "int8")
    loaded = runtime.from_pretrained(tmp_path / "int8")
    assert not loaded.training and loaded.tokenizer is not None
    assert loaded.generation_config.max_new_tokens == 5
    torch.testing.assert_close(loaded(ids, decoder_input_ids=ids[:, :3]).logits,
                               model(ids, decoder_input_ids=ids[:, :3]).logits, rtol=0, atol=0)
    assert loaded.generate(ids).tolist() == model.generate(ids).tolist()
    assert not any(p.name.endswith(".partial") for p in (tmp_path / "int8").iterdir())


def test_a_saved_quantized_classifier_reloads_with_its_labels_and_config(tmp_path):
    labels = {0: "neg", 1: "neu", 2: "pos"}
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, num_labels=3, id2label=labels,
                                     label2id={v: k for k, v in labels.items()})
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "float")
    model = runtime.from_pretrained(tmp_path / "float", quantization="int8")
    save_quantized(model, tmp_path / "int8")
    loaded = runtime.from_pretrained(tmp_path / "int8")
    assert loaded.id2label == labels and loaded.config.hf["label2id"] == {v: k for k, v in labels.items()}
    save_quantized(loaded, tmp_path / "again")         # and saved once more, every config.json key kept
    source = json.loads((tmp_path / "float" / "config.json").read_text())
    assert set(source) - {"torch_dtype"} <= set(json.loads((tmp_path / "again" / "config.json").read_text()))


def test_save_pretrained_of_a_quantized_model_saves_it_quantized_and_it_loads_back(checkpoint, tmp_path):
    model = quantize_model(runtime.from_pretrained(checkpoint), "int4")
    ids = random_ids(1000, 1, 6)
    model.save_pretrained(tmp_path / "saved")
    loaded = runtime.from_pretrained(tmp_path / "saved")
    assert loaded.quantization == model.quantization
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_a_quantized_model_is_not_quantized_again(checkpoint):
    for model in (quantize_model(runtime.from_pretrained(checkpoint), "int8"),
                  runtime.from_pretrained(checkpoint, quantization="int8")):
        with pytest.raises(ValueError, match=r"already quantized \(int8\); load the float checkpoint again"):
            quantize_model(model, "int4")
        assert model.quantization.scheme.name == "int8" and model.load_report["quantized"]
