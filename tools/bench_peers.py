"""Other inference engines for tools/bench.py, each used only when its package is installed
(`pip install -e ".[bench]"`): llama.cpp through llama-cpp-python, CTranslate2.

Both get the bench's own random Llama checkpoint (tools/bench_moe.py: a Mixtral's, llama.cpp only):
for llama.cpp it is written as a GGUF file here with the `gguf` package (f32, q/k rows permuted as
llama.cpp's converter does for its rotary layout, a Mixtral's experts stacked per layer, a
placeholder vocabulary since the checkpoint has no tokenizer) and quantized to bf16 / q8_0 / q4_0
by llama.cpp's own `llama_model_quantize`, so each file holds the tensor types llama.cpp itself
picks for that format; CTranslate2 converts it with its Transformers converter, given a word-level
tokenizer of placeholder tokens written beside the checkpoint.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

# graphspec's int8 / int4 keep activations in float; w8a8 / w4a8 quantize them to int8 in blocks of 32
# as llama.cpp's q8_0 / q4_0 products do (and CTranslate2's int8): each peer runs beside both
LLAMA_CPP_TYPES = {"fp32": None, "bf16": "MOSTLY_BF16", "int8": "MOSTLY_Q8_0", "int4": "MOSTLY_Q4_0",
                   "w8a8": "MOSTLY_Q8_0", "w4a8": "MOSTLY_Q4_0"}
LLAMA_CPP_NAMES = {"fp32": "f32", "bf16": "bf16", "int8": "q8_0", "int4": "q4_0", "w8a8": "q8_0", "w4a8": "q4_0"}
CT2_TYPES = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8", "w8a8": "int8"}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def token_name(i: int) -> str:
    return f"t{i}"


# -- llama.cpp --------------------------------------------------------------------------------------
def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved pairs (its converter's `permute`)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf_f32(folder: Path, out: Path) -> Path:
    import gguf
    from safetensors.torch import load_file
    cfg = json.loads((folder / "config.json").read_text())
    tensors = load_file(str(folder / "model.safetensors"))
    heads, kv_heads, layers = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(cfg["hidden_size"] // heads)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(float((cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = cfg["vocab_size"]
    w.add_tokenizer_model("llama")
    w.add_token_list([token_name(i) for i in range(vocab)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([gguf.TokenType.NORMAL] * vocab)
    w.add_bos_token_id(cfg.get("bos_token_id", 1))
    w.add_eos_token_id(cfg.get("eos_token_id", 2))
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    experts = cfg.get("num_local_experts")
    if experts:
        # Mixtral: llama.cpp's llama architecture with a router and the experts stacked per layer
        w.add_expert_count(experts)
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        for hf in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            del per_layer[hf]
        per_layer["block_sparse_moe.gate"] = "ffn_gate_inp"
    for i in range(layers):
        for hf, ours in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{ours}.weight"
    for hf, name in names.items():
        t = tensors[hf].float()
        if name.endswith("attn_q.weight"):
            t = _permute(t, heads)
        elif name.endswith("attn_k.weight"):
            t = _permute(t, kv_heads)
        w.add_tensor(name, t.numpy())
    for i in range(layers if experts else 0):
        for ours, hf in (("ffn_gate_exps", "w1"), ("ffn_down_exps", "w2"), ("ffn_up_exps", "w3")):
            stacked = torch.stack([tensors[f"model.layers.{i}.block_sparse_moe.experts.{e}.{hf}.weight"].float()
                                   for e in range(experts)])
            w.add_tensor(f"blk.{i}.{ours}.weight", stacked.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@contextlib.contextmanager
def output_to(log: Path):
    """The process's own stdout and stderr (what C libraries print) appended to `log` meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def gguf_files(folder: Path, workdir: Path, precisions) -> dict[str, Path]:
    """precision -> GGUF file: f32 written here, the others quantized from it by llama.cpp."""
    import llama_cpp
    base = write_gguf_f32(folder, workdir / "model-f32.gguf")
    out = {}
    for p in precisions:
        ftype = LLAMA_CPP_TYPES.get(p, "missing")
        if ftype == "missing":
            continue
        if ftype is None:
            out[p] = base
            continue
        path = workdir / f"model-{LLAMA_CPP_NAMES[p]}.gguf"
        if not path.exists():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{ftype}")
            params.nthread = torch.get_num_threads()
            with output_to(workdir / "llama.cpp.log"):      # a line per tensor
                status = llama_cpp.llama_model_quantize(str(base).encode(), str(path).encode(), params)
            if status != 0:
                raise RuntimeError(f"llama_model_quantize to {ftype} failed (see {workdir / 'llama.cpp.log'})")
        out[p] = path
    return out


class LlamaCpp:
    """One GGUF model in llama.cpp: prefill to the next-token logits, greedy decode."""

    def __init__(self, path: Path, threads: int, n_ctx: int = 1024):
        import llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                                   n_threads_batch=threads, logits_all=False, verbose=False)

    def last_logits(self) -> np.ndarray:
        import llama_cpp
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.llm.n_vocab(),))

    def prefill(self, ids: torch.Tensor) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids[0].tolist())
        return self.last_logits()

    def generate(self, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
        out = prompt[0].tolist()
        self.llm.reset()
        self.llm.eval(out)
        for _ in range(new_tokens):
            token = int(np.argmax(self.last_logits()))
            out.append(token)
            self.llm.eval([token])
        return torch.tensor([out])

    def close(self):
        self.llm.close()


# -- CTranslate2 ------------------------------------------------------------------------------------
def write_placeholder_tokenizer(folder: Path, vocab: int) -> None:
    """A word-level tokenizer whose tokens are t0..t{vocab-1}: what the converter needs for a vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({token_name(i): i for i in range(vocab)}, unk_token=token_name(0)))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": token_name(1), "eos_token": token_name(2),
        "unk_token": token_name(0)}))


def ct2_model(folder: Path, workdir: Path) -> Path:
    import ctranslate2
    out = workdir / "ct2"
    if not out.exists():
        ctranslate2.converters.TransformersConverter(str(folder)).convert(str(out), quantization="float32")
    return out


class CTranslate2:
    def __init__(self, path: Path, compute_type: str, threads: int):
        import ctranslate2
        self.gen = ctranslate2.Generator(str(path), device="cpu", compute_type=compute_type, intra_threads=threads,
                                         inter_threads=1)

    def prefill(self, ids: torch.Tensor):
        tokens = [token_name(i) for i in ids[0].tolist()]
        return self.gen.generate_batch([tokens], max_length=1, sampling_topk=1, include_prompt_in_result=False)

    def generate(self, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
        tokens = [token_name(i) for i in prompt[0].tolist()]
        res = self.gen.generate_batch([tokens], max_length=new_tokens, min_length=new_tokens, sampling_topk=1,
                                      include_prompt_in_result=False)
        new = res[0].sequences_ids[0]
        if len(new) != new_tokens:
            raise RuntimeError(f"CTranslate2 generated {len(new)} tokens, asked for {new_tokens}")
        return torch.cat([prompt, torch.tensor([new])], dim=1)

    def close(self):
        del self.gen
