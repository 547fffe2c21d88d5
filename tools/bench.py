"""`python -m tools.bench`: graphspec against Transformers on one random Llama-135M-shaped checkpoint.

Both run in this process, on the same threads, dtype and weights (saved once in the Hugging Face
layout). Prints medians of repeated runs and ratios: prefill (1 x 512 tokens) against Transformers
`sdpa`, `eager` and `torch.compile`; greedy decode (32-token prompt, 128 new tokens, outputs must be
identical); decode as a fraction of the weight-streaming bound (measured bandwidth / weight bytes);
cold and warm compile; checkpoint load time and peak RSS (in a child process, so nothing else
loaded here counts). Takes minutes; never part of the test suite. Transformers is imported only here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPE = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
             num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
             bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
SPEC = Path(__file__).resolve().parent.parent / "specs" / "llama.yaml"


def median_time(fn, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: dict, repeat: int, warmup: bool = True) -> tuple[dict, dict]:
    """Median seconds per implementation, alternating them run by run so load changes on the
    machine hit every implementation alike; also each one's last result."""
    times, results = {name: [] for name in fns}, {}
    if warmup:
        for fn in fns.values():
            fn()
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results


def build_checkpoint(folder: Path) -> None:
    import transformers
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**SHAPE)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.02 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)


def bandwidth_gbs() -> float:
    """Read bandwidth: bytes per second a sum over 256 MiB streams, on the benchmark's threads.

    A decode step only reads its weights, so reading (not copying, which also writes) is its bound."""
    src = torch.empty(64 * 2 ** 20, dtype=torch.float32).fill_(1.0)
    t = median_time(lambda: src.sum(), repeat=7)
    return src.numel() * 4 / t / 1e9


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step streams: every weight but the embedding table (one row of it is read)."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen or "embed" in name:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


def _vm_kib(field: str) -> int:
    # /proc's VmHWM belongs to this process image (ru_maxrss survives exec and would count the parent's peak)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def load_probe(folder: str, dtype: str) -> None:
    """Child process: load time and peak RSS while loading (printed as JSON)."""
    import runtime
    from compiler.pipeline import compile_spec
    import torch
    from runtime.loader import open_artifact
    artifact = compile_spec(SPEC).directory
    # Libraries are loaded once per process, not per checkpoint: import the artifact (model.py pulls in
    # kernels.py and triton) and page in the cast kernels first, so the growth measured is the weights'.
    open_artifact(artifact)
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    torch.ones(4096).to(getattr(torch, dtype))
    before = _vm_kib("VmHWM") * 1024
    start = time.perf_counter()
    model = runtime.load(artifact, folder, dtype=dtype)
    seconds = time.perf_counter() - start
    peak = _vm_kib("VmHWM") * 1024
    weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    print(json.dumps({"load_s": seconds, "peak_rss": peak, "rss_before": before, "weight_bytes": weights}))


def probe_load(folder: Path, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "tools.bench", "--probe-load", str(folder), "--dtype", dtype],
                         capture_output=True, text=True, cwd=SPEC.parent.parent, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_times() -> tuple[float, float]:
    from compiler.pipeline import compile_spec
    with tempfile.TemporaryDirectory() as tmp:
        cold = median_time(lambda: compile_spec(SPEC, Path(tmp) / f"a{time.perf_counter_ns()}"), repeat=3, warmup=0)
        compile_spec(SPEC, Path(tmp) / "warm")
        warm = median_time(lambda: compile_spec(SPEC, Path(tmp) / "warm"), repeat=5)
    return cold, warm


def cold_compile_process() -> float:
    """A fresh process compiling into a fresh directory: imports included."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tools.cli", "compile", str(SPEC), "-o", str(Path(tmp) / "a"), "-q"],
                       check=True, capture_output=True, cwd=SPEC.parent.parent)
        return time.perf_counter() - start


def artifact_swaps(repeat: int = 2000) -> dict:
    """Seconds per swap of one artifact directory for another, by each way of doing it atomically
    (compiler/artifact.py says which it uses and why), and for one whole artifact write of llama."""
    from compiler.artifact import exchange, write_artifact
    from compiler.pipeline import compile_spec
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("a", "b", "v1", "v2"):
            (root / name).mkdir()
            (root / name / "model.py").write_text("x")
        os.symlink("v1", root / "link")
        flip = iter(range(10**9))

        def symlink_swap():
            os.symlink("v2" if next(flip) % 2 else "v1", root / "link.new")
            os.replace(root / "link.new", root / "link")

        def two_renames():
            os.rename(root / "a", root / "old")
            os.rename(root / "b", root / "a")
            os.rename(root / "old", root / "b")
        times = {"renameat2 exchange": median_time(lambda: exchange(root / "a", root / "b"), repeat),
                 "symlink replace": median_time(symlink_swap, repeat),
                 "two renames (not atomic)": median_time(two_renames, repeat)}
        result = compile_spec(SPEC, root / "llama")
        files = {p.name: p.read_text() for p in result.directory.iterdir() if p.name != "manifest.json"}
        manifest = {k: v for k, v in result.manifest.items() if k not in ("files", "manifest_sha256")}
        flip_key = iter(range(10**9))

        def whole_write():   # a changed key each time, so every write swaps
            write_artifact(root / "llama", files, {**manifest, "key": f"{next(flip_key):064x}"})
        times["write_artifact (llama, 5 files, swap included)"] = median_time(whole_write, repeat // 20)
    return times


def run(args) -> None:
    import transformers

    import runtime
    from compiler.pipeline import compile_spec
    torch.set_num_threads(args.threads or torch.get_num_threads())
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}")
    workdir = Path(tempfile.mkdtemp(prefix="graphspec-bench-"))
    folder = workdir / "llama-135m"
    start = time.perf_counter()
    build_checkpoint(folder)
    print(f"checkpoint: random Llama {SHAPE['hidden_size']}h x {SHAPE['num_hidden_layers']}L, "
          f"{SHAPE['num_attention_heads']}/{SHAPE['num_key_value_heads']} heads, built in {time.perf_counter() - start:.1f} s -> {folder}")

    cold, warm = compile_times()
    print(f"compile: cold {cold * 1000:.0f} ms (in process), {cold_compile_process():.2f} s (fresh process), "
          f"warm {warm * 1000:.1f} ms")
    bw = bandwidth_gbs()
    print(f"memory bandwidth (read): {bw:.1f} GB/s")
    artifact = compile_spec(SPEC).directory

    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        probe = probe_load(folder, dtype_name)
        ours = runtime.load(artifact, folder, dtype=dtype)
        refs = {impl: transformers.LlamaForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=impl).eval()
                for impl in ("sdpa", "eager")}
        gen = torch.Generator().manual_seed(1)
        long = torch.randint(3, SHAPE["vocab_size"], (1, args.prefill), generator=gen)
        prompt = torch.randint(3, SHAPE["vocab_size"], (1, 32), generator=gen)

        res = {"dtype": dtype_name}
        with torch.inference_mode():
            prefill = {"graphspec": lambda: ours(long), **{impl: (lambda r=ref: r(long)) for impl, ref in refs.items()}}
            if args.torch_compile:
                compiled = torch.compile(refs["sdpa"])
                start = time.perf_counter()
                compiled(long)
                res["torch_compile_s"] = time.perf_counter() - start
                prefill["torch.compile(sdpa)"] = lambda: compiled(long)
            res["prefill"] = interleaved(prefill, args.repeat)[0]
            # what generation's first step needs: the next-token logits, the LM head on the last position
            res["prefill_last"] = interleaved({
                "graphspec": lambda: ours(long, logits_to_keep=1),
                "sdpa": lambda: refs["sdpa"](long, logits_to_keep=1)}, args.repeat)[0]

            decode = {"graphspec": lambda: ours.generate(prompt, max_new_tokens=args.new_tokens), **{
                impl: (lambda r=ref: r.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                                do_sample=False, eos_token_id=None, pad_token_id=0))
                for impl, ref in refs.items()}}
            # decode warms up in its own prefill step: no untimed run
            res["decode"], outputs = interleaved(decode, args.decode_repeat, warmup=False)
            want = outputs["sdpa"].tolist()
            res["identical"] = {name: o.tolist() == want for name, o in outputs.items()}
        wb = weight_bytes(ours.net)
        res["roofline_tok_s"] = bw * 1e9 / wb
        res["load"] = probe
        rows.append(res)
        report(res, args)
        del ours, refs
    print(json.dumps(rows, indent=1), file=open(workdir / "bench.json", "w"))
    print(f"\nraw results: {workdir / 'bench.json'}")


def prefill_rows(times: dict, tokens: int) -> None:
    for name, t in times.items():
        ratio = "" if name == "graphspec" else f"   graphspec is {t / times['graphspec']:.2f}x"
        print(f"  {name:<22} {tokens / t:8.0f} tok/s  ({t * 1000:7.1f} ms){ratio}")


def report(res: dict, args) -> None:
    pre, dec = res["prefill"], res["decode"]
    tok = args.prefill
    print(f"\n== {res['dtype']} ==")
    print(f"prefill 1x{tok} (tokens/s, median of {args.repeat}):")
    prefill_rows(pre, tok)
    if "torch_compile_s" in res:
        print(f"  (torch.compile's first call took {res['torch_compile_s']:.1f} s)")
    print(f"prefill 1x{tok} to the next-token logits (logits_to_keep=1):")
    prefill_rows(res["prefill_last"], tok)
    n = args.new_tokens
    print(f"decode 32 + {n} greedy tokens (tokens/s, median of {args.decode_repeat}), outputs identical to sdpa's: "
          + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in res["identical"].items()))
    for name, t in dec.items():
        ratio = "" if name == "graphspec" else f"   graphspec is {t / dec['graphspec']:.2f}x"
        print(f"  {name:<22} {n / t:8.1f} tok/s  ({t:6.2f} s){ratio}")
    best = min(dec["sdpa"], dec["eager"])
    print(f"  graphspec vs best Transformers: {best / dec['graphspec']:.2f}x")
    print(f"  roofline (read bandwidth / weight bytes): {res['roofline_tok_s']:.1f} tok/s; graphspec reaches "
          f"{n / dec['graphspec'] / res['roofline_tok_s']:.0%}")
    load = res["load"]
    print(f"load: {load['load_s']:.2f} s, peak RSS {load['peak_rss'] / 2**20:.0f} MiB "
          f"(before loading {load['rss_before'] / 2**20:.0f} MiB; growth {(load['peak_rss'] - load['rss_before']) / load['weight_bytes']:.2f}x "
          f"the {load['weight_bytes'] / 2**20:.0f} MiB of weights)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--decode-repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-torch-compile", dest="torch_compile", action="store_false")
    p.add_argument("--probe-load", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--artifact-swap", action="store_true",
                   help="only time the ways of swapping an artifact directory atomically")
    args = p.parse_args(argv)
    if args.artifact_swap:
        for what, seconds in artifact_swaps().items():
            print(f"{what:50s} {seconds * 1e6:8.1f} us")
        return 0
    if args.probe_load:
        load_probe(args.probe_load, args.dtype)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    sys.exit(main())
