"""Saving runs the weight rules backwards: Transformers reads what we write, and we read it back."""
from __future__ import annotations

import json

import pytest
import torch

import runtime
from compiler.pipeline import compile_spec
from tools.demo import TINY_LLAMA

transformers = pytest.importorskip("transformers")


def test_a_saved_llama_loads_in_transformers_with_the_same_logits(tmp_path):
    art = compile_spec("specs/llama.yaml", tmp_path / "art").directory
    ours = runtime.init_random(art, {**TINY_LLAMA, "num_hidden_layers": 2}, seed=1)
    folder = runtime.save_pretrained(ours, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "llama3" and config["model_type"] == "llama"
    ref = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    x = torch.randint(0, 512, (2, 9))
    with torch.no_grad():
        assert (ref(x).logits - ours(x).logits).abs().max().item() <= 1e-4
    again = runtime.load(art, folder)
    assert torch.equal(again(x).logits, ours(x).logits)


def test_tied_weights_are_saved_once(tmp_path):
    art = compile_spec("specs/llama.yaml", tmp_path / "art").directory
    ours = runtime.init_random(art, {**TINY_LLAMA, "num_hidden_layers": 1, "tie_word_embeddings": True})
    folder = runtime.save_pretrained(ours, tmp_path / "ckpt")
    from runtime.safetensors_io import open_checkpoint
    with open_checkpoint(folder) as ckpt:
        assert "lm_head.weight" not in ckpt.tensors and "model.embed_tokens.weight" in ckpt.tensors
    assert runtime.load(art, folder).net.lm_head.weight is not None


def test_sharded_saving_writes_an_index_that_both_loaders_read(tmp_path):
    art = compile_spec("specs/llama.yaml", tmp_path / "art").directory
    ours = runtime.init_random(art, {**TINY_LLAMA, "num_hidden_layers": 2}, seed=1)
    size = ours.get_memory_footprint(return_buffers=False)
    folder = ours.save_pretrained(tmp_path / "ckpt", max_shard_size=size // 3)
    assert len(list(folder.glob("model-*-of-*.safetensors"))) >= 3
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    x = torch.randint(0, 512, (2, 9))
    ref = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        assert (ref(x).logits - ours(x).logits).abs().max().item() <= 1e-4
        assert torch.equal(runtime.load(art, folder)(x).logits, ours(x).logits)
    ours.save_pretrained(folder)          # unsharded over it: the old shards and index go
    assert sorted(p.name for p in folder.glob("model*")) == ["model.safetensors"]
