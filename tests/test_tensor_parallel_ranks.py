"""Tensor parallelism across processes: 2 and 4 ranks on gloo, started by the test as torchrun would
start them (tests/tp_worker.py), give the single-process model's logits (within 1e-5) and greedy
tokens for llama (grouped-query attention with fewer key/value heads than ranks), gpt2 (its c_attn
fused and stored transposed, an odd vocabulary split unevenly), t5 (encoder-decoder, relative
position biases split by head), phi3 (q/k/v fused in one tensor of unequal parts), gpt_neox (q/k/v
fused per head), bloom (ALiBi slopes of each rank's own heads) and mixtral (every expert's features
split, stacked from per-expert tensors); and each rank
holds about 1/N of the weights: its peak resident memory while loading (and reading every weight it
holds) grows by its share of a ~110 MB checkpoint plus a fixed overhead, not by the whole checkpoint.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (BloomConfig, BloomForCausalLM, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM,
                          Phi3Config, Phi3ForCausalLM, T5Config, T5ForConditionalGeneration)

import runtime
from compiler.pipeline import compile_spec
from runtime.quant.config import QuantConfig
from tests.hf_checkpoints import randomize, save
from tests.tp_inputs import run_model

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-5
TIMEOUT = 300              # seconds for one group of ranks; they take ~20 s on two cores
OVERHEAD = 40 << 20        # bytes a rank may grow by loading besides its weights (measured 16-26 MiB: gloo, a forward)

SMALL = {
    # 4 query heads over 2 key/value heads: 4 ranks hold one query head each and share a kv head in pairs
    "llama": ("decoder", "llama.yaml", lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attention_bias=True, mlp_bias=True))),
    "gpt2": ("decoder", "gpt2.yaml", lambda: GPT2LMHeadModel(GPT2Config(
        vocab_size=101, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2))),
    "t5": ("encoder_decoder", "t5.yaml", lambda: T5ForConditionalGeneration(T5Config(
        vocab_size=101, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4, decoder_start_token_id=0,
        eos_token_id=1, pad_token_id=0))),
    "phi3": ("decoder", "phi3.yaml", lambda: Phi3ForCausalLM(Phi3Config(
        vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2))),
    # q, k and v fused per head in one tensor: each rank holds its heads' rows of all three
    "gpt_neox": ("decoder", "gpt_neox.yaml", lambda: GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        bos_token_id=1, eos_token_id=2))),
    # ALiBi: each rank's slopes are those of its own heads (8 heads: 4 ranks hold 2 each)
    "bloom": ("decoder", "bloom.yaml", lambda: BloomForCausalLM(BloomConfig(
        vocab_size=101, hidden_size=64, n_layer=2, n_head=8, bos_token_id=1, eos_token_id=2))),
    # every expert's features split: each rank holds a slice of all 4 experts, read from per-expert tensors
    "mixtral": ("decoder", "mixtral.yaml", lambda: MixtralForCausalLM(MixtralConfig(
        vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, bos_token_id=1, eos_token_id=2))),
}


# Quantized as they load, on every rank: int8 keeps one scale per whole row, so a rank holding a
# slice of a row-parallel linear's inputs (o_proj, down_proj, an expert's w2) takes the row's extreme
# from every rank and stores the single process's numbers for its slice
QUANTIZED = {"llama_int8": ("llama", "int8"), "mixtral_int8": ("mixtral", "int8")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(n: int, jobs: dict, work: Path) -> list[dict]:
    """Start n ranks on one machine (RANK, WORLD_SIZE, MASTER_ADDR/PORT, as torchrun sets them) and
    collect what each wrote."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "jobs.json").write_text(json.dumps(jobs))
    port = _free_port()
    procs = []
    for rank in range(n):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(n), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.tp_worker", str(work / "jobs.json"), str(work)],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} of {n} failed:\n{log[-4000:]}"
    return [torch.load(work / f"rank{r}.pt") for r in range(n)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process references, and every rank's results for 2 and 4 ranks."""
    tmp = tmp_path_factory.mktemp("tp")
    models, reference = [], {}
    for name, (kind, spec, make) in SMALL.items():
        folder = save(randomize(make(), seed=1), tmp / name)
        reference[name] = run_model(runtime.from_pretrained(folder), kind)
        models.append({"name": name, "folder": str(folder), "spec": str(ROOT / "specs" / spec), "kind": kind})
    for name, (base, scheme) in QUANTIZED.items():
        kind, spec, _ = SMALL[base]
        reference[name] = run_model(runtime.from_pretrained(tmp / base, quantization=scheme), kind)
        models.append({"name": name, "folder": str(tmp / base), "spec": str(ROOT / "specs" / spec), "kind": kind,
                       "quantization": scheme})
    big = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=384, intermediate_size=768, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2)).eval()
    weights = sum(p.numel() * p.element_size() for p in big.parameters())
    save(big, tmp / "big")
    del big
    out = {"reference": reference, "weights": weights}
    for n in (1, 2, 4):
        for kind, spec, _ in SMALL.values():   # compiled once here; the ranks find them in the cache
            compile_spec(ROOT / "specs" / spec, options={"tp": n})
        for base, scheme in QUANTIZED.values():
            compile_spec(ROOT / "specs" / SMALL[base][1], options={"quant": QuantConfig.parse(scheme).to_dict(), "tp": n})
        jobs = {"rss": {"folder": str(tmp / "big"), "spec": str(ROOT / "specs" / "llama.yaml")},
                "models": models if n > 1 else []}
        out[n] = run_ranks(n, jobs, tmp / f"ranks{n}")
    return out


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("name", list(SMALL) + list(QUANTIZED))
def test_every_rank_gives_the_single_process_logits_and_tokens(runs, name, n):
    want = runs["reference"][name]
    for rank, result in enumerate(runs[n]):
        got = result[name]
        assert got["logits"].shape == want["logits"].shape
        diff = (got["logits"] - want["logits"]).abs().max().item()
        assert diff <= TOL, f"{name}, rank {rank} of {n}: max |Δlogits| {diff:.2e}"
        assert got["tokens"] == want["tokens"], f"{name}, rank {rank} of {n}"


@pytest.mark.parametrize("n", [1, 2, 4])
def test_each_rank_holds_its_share_of_the_weights(runs, n):
    weights = runs["weights"]
    if any("rss" not in result for result in runs[n]):
        pytest.skip("peak resident memory is measured through Linux's /proc/self (clear_refs, VmHWM)")
    for rank, result in enumerate(runs[n]):
        growth = result["rss"]["peak"] - result["rss"]["before"]
        print(f"{n} rank(s), rank {rank}: peak resident growth while loading {growth / 2**20:.1f} MiB "
              f"(weights {weights / 2**20:.1f} MiB, share {weights / n / 2**20:.1f} MiB)")
        assert weights / n <= growth <= weights / n + OVERHEAD, (
            f"rank {rank} of {n} grew by {growth / 2**20:.1f} MiB loading {weights / 2**20:.1f} MiB of weights")


def test_a_split_model_refuses_to_be_saved(runs):
    for result in runs[2]:
        assert "holds only this rank's share" in result.get("save", "saved without an error")
