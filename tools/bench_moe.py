"""`python -m tools.bench_moe`: a mixture of experts' greedy decode, graphspec against Transformers.

One random Mixtral (6 layers, hidden 512, 8 experts of 1024, top 2, vocabulary 32000) saved in the
Hugging Face layout; 32 new tokens after a 32-token prompt, 2 threads. graphspec runs each precision
(fp32; int8, w8a8, int4, w4a8 with the LM head in int8 and the router in float, as llama.cpp's files
keep them) twice per round: with a decode step's picks computed by one C call that reads the
experts from the router's output (runtime.ops.grouped.NativePicks, so the step is recorded and
replayed), and with the sorted path forced (`NATIVE_PICKS = 0`: the step stays eager), alternated in
this process (the only comparison that stays steady on a shared machine); Transformers fp32 in the
same rounds, and llama.cpp f32 / q8_0 / q4_0 on the same weights when llama-cpp-python and gguf are
installed (tools/bench_peers.py). Prints medians in tokens/s and whether the tokens agree. A few
minutes; never part of the test suite.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import runtime
from runtime.ops import grouped
from runtime.quant.config import QuantConfig
from tools import bench_peers

NEW_TOKENS = 32
# weight-only, and with int8 activations as llama.cpp's q8_0 / q4_0 products compute
SCHEMES = ("int8", "w8a8", "int4", "w4a8")


def main(argv=None) -> None:
    import transformers                       # the reference: only the bench imports it
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)      # --help
    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = transformers.MixtralConfig(vocab_size=32000, hidden_size=512, intermediate_size=1024, num_hidden_layers=6,
                                        num_attention_heads=8, num_key_value_heads=4, num_local_experts=8,
                                        num_experts_per_tok=2, max_position_embeddings=1024)
    reference = transformers.MixtralForCausalLM(config).eval()
    folder = tempfile.mkdtemp(prefix="graphspec-bench-moe-")
    reference.save_pretrained(folder)
    ids = torch.randint(3, 32000, (1, 32), generator=torch.Generator().manual_seed(1))
    # the LM head quantized too (int8), as llama.cpp's q8_0 / q4_0 files store theirs (q6_K for q4_0);
    # the router in float, as theirs (ffn_gate_inp)
    models = {"fp32": runtime.from_pretrained(folder)}
    for scheme in SCHEMES:
        config = {**QuantConfig.parse(scheme).to_dict(), "modules_to_not_convert": ["router"], "lm_head_bits": 8}
        models[scheme] = runtime.from_pretrained(folder, quantization=config)
    peers = {}
    if bench_peers.installed("llama_cpp") and bench_peers.installed("gguf"):
        # the same weights as GGUF f32, quantized by llama.cpp to q8_0 / q4_0 (its own choice of types)
        files = bench_peers.gguf_files(Path(folder), Path(folder), ["fp32", *SCHEMES])
        peers = {p: bench_peers.LlamaCpp(path, torch.get_num_threads()) for p, path in files.items()}
    speeds: dict[tuple, list[float]] = {}
    tokens: dict[tuple, list[int]] = {}

    def timed(key, generate):
        start = time.perf_counter()
        out = generate()
        speeds.setdefault(key, []).append(NEW_TOKENS / (time.perf_counter() - start))
        tokens[key] = out[0, ids.shape[1]:].tolist()

    for rounds in range(4):
        for name, model in models.items():
            for picks in ((grouped.NATIVE_PICKS, 0) if rounds % 2 else (0, grouped.NATIVE_PICKS)):
                saved, grouped.NATIVE_PICKS = grouped.NATIVE_PICKS, picks
                try:
                    model.generate(ids, max_new_tokens=4)           # the kernels' paths measured
                    timed((name, picks), lambda: model.generate(ids, max_new_tokens=NEW_TOKENS))
                finally:
                    grouped.NATIVE_PICKS = saved
        with torch.no_grad():
            timed(("transformers fp32", 0), lambda: reference.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False))
        for precision, peer in peers.items():
            timed(("llama.cpp", precision), lambda: peer.generate(ids, NEW_TOKENS))
    print(f"greedy decode, {NEW_TOKENS} new tokens after 32, tokens/s (median of {len(speeds[('fp32', 0)])})")
    for name in models:
        fast, slow = statistics.median(speeds[(name, grouped.NATIVE_PICKS)]), statistics.median(speeds[(name, 0)])
        same = tokens[(name, grouped.NATIVE_PICKS)] == tokens[(name, 0)]
        print(f"  graphspec {name:5s} replayed {fast:6.1f}   eager (sorted path) {slow:6.1f}   "
              f"{fast / slow:.2f}x   same tokens: {same}")
    for precision in peers:
        theirs = statistics.median(speeds[("llama.cpp", precision)])
        ours = statistics.median(speeds[(precision, grouped.NATIVE_PICKS)])
        print(f"  llama.cpp {bench_peers.LLAMA_CPP_NAMES[precision]:5s} {theirs:6.1f}   graphspec {precision} "
              f"{ours / theirs:.2f}x   same tokens as graphspec {precision}: "
              f"{tokens[('llama.cpp', precision)] == tokens[(precision, grouped.NATIVE_PICKS)]}")
    hf = statistics.median(speeds[("transformers fp32", 0)])
    print(f"  transformers fp32 {hf:6.1f}   graphspec fp32 {statistics.median(speeds[('fp32', grouped.NATIVE_PICKS)]) / hf:.2f}x"
          f"   same tokens: {tokens[('transformers fp32', 0)] == tokens[('fp32', grouped.NATIVE_PICKS)]}")


if __name__ == "__main__":
    main()
