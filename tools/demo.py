"""The main job end to end, with nothing downloaded: compile a spec, make a small random checkpoint in
the Hugging Face layout, load it back through the spec's rules, and generate.

    python -m tools.demo [--spec specs/llama.yaml] [--out build/demo]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import runtime
from compiler.pipeline import compile_spec

TINY_LLAMA = dict(vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 64})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="specs/llama.yaml")
    parser.add_argument("--out", default="build/demo")
    parser.add_argument("--new-tokens", type=int, default=24)
    args = parser.parse_args(argv)
    out = Path(args.out)

    result = compile_spec(args.spec, out / "artifact")
    state = "cache hit" if result.cache_hit else "compiled"
    print(f"1. {args.spec}: {state} in {result.seconds * 1000:.1f} ms -> {result.directory}")
    print(f"   ops: {', '.join(f'{k} x{v}' for k, v in result.manifest['ops'].items())}")

    model = runtime.init_random(result.directory, TINY_LLAMA, seed=0)
    folder = runtime.save_pretrained(model, out / "checkpoint")
    n = sum(p.numel() for p in model.net.parameters())
    print(f"2. random checkpoint ({n / 1e6:.2f}M params) written in the Hugging Face layout -> {folder}")
    print(f"   files: {', '.join(sorted(p.name for p in folder.iterdir()))}")

    start = time.perf_counter()
    loaded = runtime.from_pretrained(folder)
    print(f"3. from_pretrained picked spec '{loaded.spec.name}' from config.json and loaded "
          f"{loaded.load_report['tensors']} tensors in {(time.perf_counter() - start) * 1000:.0f} ms")

    prompt = torch.tensor([[1, 17, 42, 99, 7]])
    same = torch.equal(loaded(prompt).logits, model(prompt).logits)
    start = time.perf_counter()
    tokens = loaded.generate(prompt, max_new_tokens=args.new_tokens)
    seconds = time.perf_counter() - start
    print(f"4. greedy generation: {tokens[0, prompt.shape[1]:].tolist()}")
    print(f"   {args.new_tokens / seconds:.0f} tokens/s; logits after the save/load round trip identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
