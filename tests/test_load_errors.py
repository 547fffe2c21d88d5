"""Checkpoints, config.json files and artifacts that do not fit give one clear error, never a crash."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

import runtime
from compiler.pipeline import compile_spec
from runtime.errors import ArtifactError, CheckpointError, ConfigError

CONFIG = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=50, hidden_size=16,
              intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              rms_norm_eps=1e-6, tie_word_embeddings=False)


def llama_tensors(cfg=CONFIG) -> dict[str, torch.Tensor]:
    h, i, v, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_key_value_heads"]
    d = h // cfg["num_attention_heads"]
    out = {"model.embed_tokens.weight": torch.randn(v, h), "model.norm.weight": torch.ones(h), "lm_head.weight": torch.randn(v, h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out.update({p + "self_attn.q_proj.weight": torch.randn(h, h), p + "self_attn.k_proj.weight": torch.randn(kv * d, h),
                    p + "self_attn.v_proj.weight": torch.randn(kv * d, h), p + "self_attn.o_proj.weight": torch.randn(h, h),
                    p + "mlp.gate_proj.weight": torch.randn(i, h), p + "mlp.up_proj.weight": torch.randn(i, h),
                    p + "mlp.down_proj.weight": torch.randn(h, i), p + "input_layernorm.weight": torch.ones(h),
                    p + "post_attention_layernorm.weight": torch.ones(h)})
    return out


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return compile_spec("specs/llama.yaml", tmp_path_factory.mktemp("art") / "llama").directory


def checkpoint(tmp_path, tensors=None, config=None):
    folder = tmp_path / "ckpt"
    folder.mkdir(exist_ok=True)
    save_file(tensors if tensors is not None else llama_tensors(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config or CONFIG))
    return folder


def test_a_good_handmade_checkpoint_loads(tmp_path, artifact):
    model = runtime.load(artifact, checkpoint(tmp_path))
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 50)


def test_missing_unexpected_and_mis_shaped_tensors_are_listed_together(tmp_path, artifact):
    tensors = llama_tensors()
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.rotary.inv_freq"] = torch.ones(2)
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.randn(16, 16)
    with pytest.raises(CheckpointError) as info:
        runtime.load(artifact, checkpoint(tmp_path, tensors))
    message = str(info.value)
    assert "1 missing" in message and "layers.1.mlp.up_proj.weight" in message
    assert "1 unexpected" in message and "model.layers.0.self_attn.rotary.inv_freq" in message
    assert "1 mis-shaped" in message and "layers.0.attn.k_proj.weight: the model wants [8, 16], the checkpoint gives [16, 16]" in message


def test_bias_tensors_the_config_does_not_have_are_unexpected_with_the_reason(tmp_path, artifact):
    tensors = llama_tensors()
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(16)
    with pytest.raises(CheckpointError, match="which this config does not have"):
        runtime.load(artifact, checkpoint(tmp_path, tensors))


def test_unexpected_tensors_only_warn_when_not_strict(tmp_path, artifact):
    tensors = llama_tensors()
    tensors["extra.weight"] = torch.zeros(3)
    with pytest.warns(UserWarning, match="extra.weight"):
        runtime.load(artifact, checkpoint(tmp_path, tensors), strict=False)


def test_a_tied_head_the_checkpoint_carries_is_loaded_and_untied_like_transformers_5(tmp_path, artifact):
    tensors = llama_tensors()
    model = runtime.load(artifact, checkpoint(tmp_path, tensors, config={**CONFIG, "tie_word_embeddings": True}))
    assert model.net.lm_head.weight is not model.net.embed.weight
    assert torch.equal(model.net.lm_head.weight, tensors["lm_head.weight"])
    assert model.load_report["untied"] == ["lm_head.weight"]


def test_a_tied_head_absent_from_the_checkpoint_stays_tied(tmp_path, artifact):
    tensors = llama_tensors()
    del tensors["lm_head.weight"]
    model = runtime.load(artifact, checkpoint(tmp_path, tensors, config={**CONFIG, "tie_word_embeddings": True}))
    assert model.net.lm_head.weight is model.net.embed.weight


def test_zero_copy_load_shares_memory_with_the_mapped_file(tmp_path, artifact):
    folder = checkpoint(tmp_path)
    model = runtime.load(artifact, folder)
    expected = load_file(str(folder / "model.safetensors"))
    assert torch.equal(model.net.layers[1].mlp.down_proj.weight, expected["model.layers.1.mlp.down_proj.weight"])


def test_corrupt_header_is_our_error(tmp_path, artifact):
    folder = checkpoint(tmp_path)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:12] = b"\xff\xfe{{"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        runtime.load(artifact, folder)


def test_truncated_file_is_our_error(tmp_path, artifact):
    folder = checkpoint(tmp_path)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        runtime.load(artifact, folder)


def test_header_length_past_the_end_is_our_error(tmp_path, artifact):
    folder = checkpoint(tmp_path)
    path = folder / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10**7) + b"{}")
    with pytest.raises(CheckpointError):
        runtime.load(artifact, folder)


def test_pickle_checkpoints_are_refused(tmp_path, artifact):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    (folder / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(CheckpointError, match="pickle"):
        runtime.load(artifact, folder)


@pytest.mark.parametrize("text, words", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    (json.dumps({**CONFIG, "hidden_size": "16"}), "expected int for 'hidden_size'"),
    (json.dumps({k: v for k, v in CONFIG.items() if k != "vocab_size"}), "missing required key vocab_size"),
    (json.dumps({**CONFIG, "num_key_value_heads": 3}), "num_key_value_heads must divide num_attention_heads"),
    (json.dumps({**CONFIG, "rope_scaling": {"type": "yarn", "factor": 2.0}}), "rope scaling type must be"),
    (json.dumps({**CONFIG, "auto_map": {"AutoModel": "x.Y"}}), "remote code"),
    (json.dumps({**CONFIG, "rms_norm_eps": float("nan")}).replace("NaN", "NaN"), "NaN"),
])
def test_bad_config_json_names_the_file_and_the_key(tmp_path, artifact, text, words):
    folder = checkpoint(tmp_path)
    (folder / "config.json").write_text(text)
    with pytest.raises(ConfigError) as info:
        runtime.load(artifact, folder)
    assert words in str(info.value) and "config.json" in str(info.value)


def test_config_json_that_is_not_utf8(tmp_path, artifact):
    folder = checkpoint(tmp_path)
    (folder / "config.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        runtime.load(artifact, folder)


def test_an_edited_artifact_is_refused(tmp_path, artifact):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    with open(copy / "model.py", "a") as f:
        f.write("\nimport os  # injected\n")
    with pytest.raises(ArtifactError, match="do not match"):
        runtime.load(copy, checkpoint(tmp_path))


def test_a_folder_that_is_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="graphspec artifact"):
        runtime.load(tmp_path, tmp_path)


def test_a_chunked_cast_loads_the_same_bf16_weights(tmp_path, artifact, monkeypatch):
    """Large tensors are cast chunk by chunk (giving back the mapped pages as it goes); the result is
    the plain cast's, bit for bit."""
    import runtime.weights as weights
    folder = checkpoint(tmp_path)
    plain = runtime.load(artifact, folder, dtype=torch.bfloat16)
    monkeypatch.setattr(weights, "CHUNK_BYTES", 256)   # every tensor here is then "large"
    chunked = runtime.load(artifact, folder, dtype=torch.bfloat16)
    for (name, a), (_, b) in zip(plain.net.named_parameters(), chunked.net.named_parameters()):
        assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b), name
    x = torch.tensor([[1, 2, 3]])
    assert torch.equal(plain(x).logits, chunked(x).logits)
