"""`python -m tools.bench`: graphspec against its peers on one random Llama-135M-shaped checkpoint.

Everything runs in this process, on the same threads and weights (saved once in the Hugging Face
layout), interleaved run by run, medians. Per precision (fp32, bf16, int8, int4):
  - prefill 1 x 512 tokens, all logits: graphspec against Transformers `sdpa` and `torch.compile`
    (fp32, bf16);
  - prefill 1 x 512 to the next-token logits and greedy decode (32-token prompt, 128 new tokens)
    against Transformers (fp32, bf16), llama.cpp (f32 / bf16 / q8_0 / q4_0, when llama-cpp-python and
    gguf are installed) and CTranslate2 (float32 / bfloat16 / int8, when installed);
  - decode against the weight-streaming bound (read bandwidth / bytes one token reads), and the
    decode step split into its matmuls and the rest;
  - int8 / int4: logits cosine and top-1 agreement with fp32, and each engine's next-token logits
    cosine with fp32 (a peer's accuracy at its own quantization, on the same weights);
  - the decode step's fixed overhead (Python, dispatch, small allocations): ms per step of a model of
    the same depth and heads whose matmuls cost next to nothing (hidden 96), against Transformers'
    (`--step-overhead` runs only this, in under a minute).
Also cold and warm compile, and load time and peak RSS in a child process (fp32, bf16). Takes about
ten minutes; never part of the test suite. Transformers and the peers are imported only here.
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

import numpy as np
import torch

from runtime.quant.linear import QuantEmbedding, QuantLinear
from tools import bench_peers

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
    """Bytes a decode step streams: every weight (quantized ones with their scales) but the input
    embedding table, of which one row is read."""
    tables = {id(t) for m in model.modules() if isinstance(m, (torch.nn.Embedding, QuantEmbedding))
              for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]}
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        if id(t) not in tables:
            total += t.numel() * t.element_size()
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
    from runtime.artifact import open_artifact
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


PRECISIONS = {"fp32": ("float32", None), "bf16": ("bfloat16", None), "int8": ("float32", "int8"),
              "int4": ("float32", "int4"), "w8a8": ("float32", "w8a8"), "w4a8": ("float32", "w4a8")}


def peers_for(args, folder: Path, workdir: Path) -> dict:
    """What is installed of llama.cpp and CTranslate2, prepared for the precisions asked."""
    out = {}
    if args.peers and bench_peers.installed("llama_cpp") and bench_peers.installed("gguf"):
        start = time.perf_counter()
        out["llama.cpp"] = bench_peers.gguf_files(folder, workdir, args.precisions)
        print(f"llama.cpp: GGUF {', '.join(bench_peers.LLAMA_CPP_NAMES[p] for p in out['llama.cpp'])} "
              f"written in {time.perf_counter() - start:.1f} s")
    elif args.peers:
        print("llama.cpp: not installed (pip install llama-cpp-python gguf), left out")
    if args.peers and bench_peers.installed("ctranslate2"):
        start = time.perf_counter()
        out["ctranslate2"] = bench_peers.ct2_model(folder, workdir)
        print(f"CTranslate2: converted in {time.perf_counter() - start:.1f} s")
    elif args.peers:
        print("CTranslate2: not installed (pip install ctranslate2), left out")
    return out


def timed_linears(model):
    """Wrap every linear of `model.net` to add its wall time to the returned dict's 's'."""
    from runtime.ops import FusedLinear, Linear
    acc = {"s": 0.0}
    for m in model.net.modules():
        if isinstance(m, (Linear, FusedLinear, QuantLinear)):
            def forward(x, _run=m.forward):
                start = time.perf_counter()
                y = _run(x)
                acc["s"] += time.perf_counter() - start
                return y
            m.forward = forward
    return acc


def decode_breakdown(model, prompt, new_tokens: int) -> dict:
    """ms per eager decode step in the matmuls (timed around each linear) and in everything else (a
    replayed step calls no linear module: the split is of the steps as they run without recording)."""
    from runtime import step_capture
    acc = timed_linears(model)
    before = os.environ.get(step_capture.ENV)
    os.environ[step_capture.ENV] = "0"
    model.generate(prompt, max_new_tokens=4)
    best = None
    for _ in range(3):
        acc["s"] = 0.0
        start = time.perf_counter()
        model.generate(prompt, max_new_tokens=new_tokens)
        total = time.perf_counter() - start
        if best is None or total < best[0]:
            best = (total, acc["s"])
    for m in model.net.modules():
        m.__dict__.pop("forward", None)
    if before is None:
        os.environ.pop(step_capture.ENV)
    else:
        os.environ[step_capture.ENV] = before
    total, linears = best
    # the prefill of the prompt is in both; it is one step of new_tokens + 1
    return {"step_ms": total / new_tokens * 1e3, "linears_ms": linears / new_tokens * 1e3}


TINY = {**SHAPE, "vocab_size": 512, "hidden_size": 96, "intermediate_size": 128}


def step_overhead(workdir: Path, new_tokens: int, repeat: int) -> dict:
    """ms per greedy decode step of a model shaped like the bench's in depth and heads but with
    weights too small to cost anything (`TINY`): what every step pays besides reading weights."""
    import transformers

    import runtime
    folder = workdir / "tiny"
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).save_pretrained(folder, safe_serialization=True)
    ours = runtime.from_pretrained(folder)
    sdpa = transformers.LlamaForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    prompt = torch.randint(3, TINY["vocab_size"], (1, 32), generator=torch.Generator().manual_seed(2))
    steps = {"graphspec": lambda: ours.generate(prompt, max_new_tokens=new_tokens, eos_token_id=None),
             "sdpa": lambda: sdpa.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                           do_sample=False)}
    times, _ = interleaved(steps, repeat)
    return {name: t / new_tokens * 1e3 for name, t in times.items()}


def report_overhead(ms: dict) -> None:
    print(f"decode step overhead ({TINY['num_hidden_layers']} layers, {TINY['num_attention_heads']}/"
          f"{TINY['num_key_value_heads']} heads, hidden {TINY['hidden_size']}: matmuls next to free), ms per step:")
    for name, t in ms.items():
        ratio = "" if name == "graphspec" else f"   graphspec is {t / ms['graphspec']:.2f}x"
        print(f"  {name:<22} {t:8.2f} ms{ratio}")


def next_token_logits(output) -> torch.Tensor | None:
    """The last position's logits from an engine's prefill result (a model output or llama.cpp's
    array), None when the engine returns none (CTranslate2 returns tokens)."""
    if hasattr(output, "logits"):
        return output.logits[0, -1].detach().float()
    if isinstance(output, np.ndarray):
        return torch.from_numpy(output.copy()).float()
    return None


def agreement(got: torch.Tensor, want: torch.Tensor) -> dict:
    cos = torch.nn.functional.cosine_similarity(got.double().flatten(1), want.double().flatten(1), dim=-1).min()
    return {"cos": float(cos), "top1": float((got.argmax(-1) == want.argmax(-1)).float().mean())}


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
    from runtime.quant import QuantConfig
    torch.set_num_threads(args.threads or torch.get_num_threads())
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {threads}, "
          f"load average {os.getloadavg()[0]:.1f}")
    workdir = Path(tempfile.mkdtemp(prefix="graphspec-bench-"))
    folder = workdir / "llama-135m"
    start = time.perf_counter()
    build_checkpoint(folder)
    bench_peers.write_placeholder_tokenizer(folder, SHAPE["vocab_size"])
    print(f"checkpoint: random Llama {SHAPE['hidden_size']}h x {SHAPE['num_hidden_layers']}L, "
          f"{SHAPE['num_attention_heads']}/{SHAPE['num_key_value_heads']} heads, built in {time.perf_counter() - start:.1f} s -> {folder}")
    cold, warm = compile_times()
    print(f"compile: cold {cold * 1000:.0f} ms (in process), {cold_compile_process():.2f} s (fresh process), "
          f"warm {warm * 1000:.1f} ms")
    bw = bandwidth_gbs()
    print(f"memory bandwidth (read): {bw:.1f} GB/s")
    artifact = compile_spec(SPEC).directory
    report_overhead(step_overhead(workdir, args.new_tokens, args.decode_repeat))
    peers = peers_for(args, folder, workdir)

    gen = torch.Generator().manual_seed(1)
    long = torch.randint(3, SHAPE["vocab_size"], (1, args.prefill), generator=gen)
    prompt = torch.randint(3, SHAPE["vocab_size"], (1, 32), generator=gen)
    rows, reference = [], {}
    for precision in args.precisions:
        dtype_name, scheme = PRECISIONS[precision]
        dtype = getattr(torch, dtype_name)
        res = {"precision": precision}
        if scheme is None and args.load_probe:
            res["load"] = probe_load(folder, dtype_name)
        if scheme is None:
            ours = runtime.load(artifact, folder, dtype=dtype)
        else:
            # the quantize pass marks the linears, the loader quantizes them; the LM head too, as
            # llama.cpp's q8_0 / q4_0 files store theirs quantized (q6_K for q4_0: here int8)
            start = time.perf_counter()
            config = {**QuantConfig.parse(scheme).to_dict(), "modules_to_not_convert": [], "lm_head_bits": 8}
            ours = runtime.load(compile_spec(SPEC, options={"quant": config}).directory, folder, dtype=dtype)
            res["quantize_s"] = time.perf_counter() - start
        engines = {"graphspec": ours}
        if scheme is None:
            engines["sdpa"] = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=dtype,
                                                                           attn_implementation="sdpa").eval()
        if precision in peers.get("llama.cpp", {}):
            engines[f"llama.cpp {bench_peers.LLAMA_CPP_NAMES[precision]}"] = bench_peers.LlamaCpp(
                peers["llama.cpp"][precision], threads)
        if "ctranslate2" in peers and precision in bench_peers.CT2_TYPES:
            try:
                engines[f"ct2 {bench_peers.CT2_TYPES[precision]}"] = bench_peers.CTranslate2(
                    peers["ctranslate2"], bench_peers.CT2_TYPES[precision], threads)
            except ValueError as err:       # e.g. bfloat16 on a CPU without AVX512-BF16
                print(f"CTranslate2 {bench_peers.CT2_TYPES[precision]}: left out: {err}")

        with torch.inference_mode():
            if scheme is None:
                prefill = {"graphspec": lambda: ours(long), "sdpa": lambda: engines["sdpa"](long)}
                if args.torch_compile:
                    compiled = torch.compile(engines["sdpa"])
                    start = time.perf_counter()
                    compiled(long)
                    res["torch_compile_s"] = time.perf_counter() - start
                    prefill["torch.compile(sdpa)"] = lambda: compiled(long)
                res["prefill"] = interleaved(prefill, args.repeat)[0]
            last = {name: (lambda e=e: e.prefill(long)) for name, e in engines.items() if hasattr(e, "prefill")}
            last = {"graphspec": lambda: ours(long, logits_to_keep=1),
                    **({"sdpa": lambda: engines["sdpa"](long, logits_to_keep=1)} if "sdpa" in engines else {}), **last}
            res["prefill_last"], lasts = interleaved(last, args.repeat)
            # every engine's next-token logits against graphspec's fp32 ones (equal to Transformers'
            # and llama.cpp f32's): a peer's accuracy at its own quantization, in the same run
            nexts = {name: v for name, v in ((k, next_token_logits(o)) for k, o in lasts.items()) if v is not None}
            if precision == "fp32":
                reference["next"] = nexts["graphspec"]
            elif "next" in reference:
                res["next_cos"] = {name: agreement(v[None], reference["next"][None])["cos"] for name, v in nexts.items()}

            def decoders(n: int) -> dict:
                out = {"graphspec": lambda: ours.generate(prompt, max_new_tokens=n, eos_token_id=None)}
                if "sdpa" in engines:
                    out["sdpa"] = lambda: engines["sdpa"].generate(prompt, max_new_tokens=n, min_new_tokens=n,
                                                                   do_sample=False, eos_token_id=None, pad_token_id=0)
                for name, e in engines.items():
                    if hasattr(e, "generate") and name not in out:
                        out[name] = lambda e=e: e.generate(prompt, n)
                return out
            # a short run first: the one-time choices (graphspec times its kernel paths per shape on
            # first use, a peer allocates its cache) stay out of the timed runs
            for warm in decoders(2).values():
                warm()
            n = args.new_tokens
            res["decode"], outputs = interleaved(decoders(n), args.decode_repeat, warmup=False)
            capture = ours.step_capture
            res["replayed"] = (capture.replayed, n - 1, capture.refused) if capture is not None else None
            logits = ours(long).logits
            if precision == "fp32":
                reference["logits"] = logits
            # greedy tokens against Transformers' in the same dtype (quantized engines differ by design)
            want = outputs["sdpa"].tolist() if "sdpa" in outputs else None
            res["identical"] = {k: o.tolist() == want for k, o in outputs.items()} if want else {}
            if scheme is not None and "logits" in reference:
                res["accuracy"] = agreement(logits, reference["logits"])
            res["breakdown"] = decode_breakdown(ours, prompt, n)
            if "sdpa" in engines and args.search:
                res.update(search_rows(ours, engines["sdpa"], prompt, args))
        res["weight_bytes"] = weight_bytes(ours.net)
        # probed again next to each precision's decode, the best reading kept: a single probe taken
        # in a slow moment of a shared machine put the bound below what the engines reached
        bw = max(bw, bandwidth_gbs())
        res["bandwidth_gbs"] = bw
        res["roofline_tok_s"] = bw * 1e9 / res["weight_bytes"]
        rows.append(res)
        report(res, args)
        for e in engines.values():
            if hasattr(e, "close"):
                e.close()
        del ours, engines
    summary(rows, args)
    print(json.dumps(rows, indent=1, default=str), file=open(workdir / "bench.json", "w"))
    print(f"\nraw results: {workdir / 'bench.json'}")


def search_rows(ours, ref, prompt, args) -> dict:
    """Sampling (Transformers' defaults: top_k 50) and 4-beam search against Transformers sdpa; greedy
    again beside sampling, interleaved, for the per-token cost of sampling. (Sampled tokens differ from
    Transformers' for one seed: graphspec draws by inverting the cumulative sum, one uniform per row.)"""
    n, beams = args.new_tokens, args.beam_new_tokens
    none = dict(eos_token_id=None, pad_token_id=0)

    def seeded(fn):
        def call():
            torch.manual_seed(0)
            return fn()
        return call
    sampling = {
        "graphspec greedy": lambda: ours.generate(prompt, max_new_tokens=n, eos_token_id=None),
        "graphspec sample": seeded(lambda: ours.generate(prompt, max_new_tokens=n, do_sample=True, eos_token_id=None)),
        "sdpa sample": seeded(lambda: ref.generate(prompt, max_new_tokens=n, do_sample=True, **none))}
    times = interleaved(sampling, args.decode_repeat, warmup=False)[0]
    beam = {"graphspec": lambda: ours.generate(prompt, max_new_tokens=beams, num_beams=4, eos_token_id=None),
            "sdpa": lambda: ref.generate(prompt, max_new_tokens=beams, num_beams=4, do_sample=False, **none)}
    beam_times, beam_outputs = interleaved(beam, args.decode_repeat, warmup=False)
    return {"sample": times, "beam": beam_times, "beam_identical": beam_outputs["graphspec"].tolist() == beam_outputs["sdpa"].tolist()}


def rate_rows(times: dict, tokens: int, unit: str = "tok/s") -> None:
    for name, t in times.items():
        ratio = "" if name == "graphspec" else f"   graphspec is {t / times['graphspec']:.2f}x"
        print(f"  {name:<22} {tokens / t:8.1f} {unit}  ({t * 1000:8.1f} ms){ratio}")


def report(res: dict, args) -> None:
    print(f"\n== {res['precision']} ==" + (f" (compiled with --quant, loaded and quantized in {res['quantize_s']:.1f} s)" if "quantize_s" in res else ""))
    tok = args.prefill
    if "prefill" in res:
        print(f"prefill 1x{tok}, all logits (tokens/s, median of {args.repeat}):")
        rate_rows(res["prefill"], tok)
        if "torch_compile_s" in res:
            print(f"  (torch.compile's first call took {res['torch_compile_s']:.1f} s)")
    print(f"prefill 1x{tok} to the next-token logits:")
    rate_rows(res["prefill_last"], tok)
    n = args.new_tokens
    same = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in res["identical"].items() if k != "sdpa")
    print(f"decode 32 + {n} greedy tokens (tokens/s, median of {args.decode_repeat})"
          + (f"; greedy tokens identical to sdpa's: {same}" if same else ""))
    rate_rows({k: v / n for k, v in res["decode"].items()}, 1)
    ours = n / res["decode"]["graphspec"]
    b = res["breakdown"]
    print(f"  bound (read bandwidth {res['bandwidth_gbs']:.1f} GB/s, the best probe so far / "
          f"{res['weight_bytes'] / 2**20:.0f} MiB per token): {res['roofline_tok_s']:.0f} tok/s; "
          f"graphspec reaches {ours / res['roofline_tok_s']:.0%}")
    if res.get("replayed"):
        replayed, steps, refused = res["replayed"]
        print(f"  graphspec replayed {replayed} of its {steps} decode steps (runtime/step_capture.py)"
              + (f"; eager because {refused}" if refused else ""))
    print(f"  graphspec eager step {b['step_ms']:.2f} ms: matmuls {b['linears_ms']:.2f} ms, "
          f"the rest {b['step_ms'] - b['linears_ms']:.2f} ms")
    if "sample" in res:
        n = args.new_tokens
        sample = res["sample"]
        print(f"sampling 32 + {n} tokens (do_sample, top_k 50; tokens/s, median of {args.decode_repeat}):")
        for name, t in sample.items():
            print(f"  {name:<22} {n / t:8.1f} tok/s  ({t:6.2f} s)")
        print(f"  sampling costs {sample['graphspec sample'] / sample['graphspec greedy'] - 1:+.1%} per token over greedy; "
              f"graphspec is {sample['sdpa sample'] / sample['graphspec sample']:.2f}x sdpa")
        nb, beam = args.beam_new_tokens, res["beam"]
        print(f"4-beam search 32 + {nb} tokens (steps/s), tokens identical to sdpa's: "
              f"{'yes' if res['beam_identical'] else 'NO'}")
        for name, t in beam.items():
            print(f"  {name:<22} {nb / t:8.1f} steps/s  ({t * 1000 / nb:6.1f} ms per step)")
        print(f"  graphspec is {beam['sdpa'] / beam['graphspec']:.2f}x sdpa per beam step")
    if "accuracy" in res:
        print(f"  logits vs fp32 (1x{tok}): cosine {res['accuracy']['cos']:.5f}, top-1 agreement {res['accuracy']['top1']:.3f}")
    if "next_cos" in res:
        print("  next-token logits vs fp32, cosine: " + ", ".join(f"{k} {v:.5f}" for k, v in res["next_cos"].items()))
    if "load" in res:
        load = res["load"]
        print(f"load: {load['load_s']:.2f} s, peak RSS {load['peak_rss'] / 2**20:.0f} MiB "
              f"(before loading {load['rss_before'] / 2**20:.0f} MiB; growth {(load['peak_rss'] - load['rss_before']) / load['weight_bytes']:.2f}x "
              f"the {load['weight_bytes'] / 2**20:.0f} MiB of weights)")


def summary(rows: list, args) -> None:
    """One table: decode tok/s and prefill-to-next-token ms per engine and precision."""
    print(f"\n== summary: decode tok/s (32 + {args.new_tokens}) / prefill 1x{args.prefill} to the next token, ms ==")
    print("(graphspec x: graphspec's speed as a multiple of that engine's; > 1 is graphspec faster)")
    print(f"(cos: the next-token logits' cosine with fp32 after the {args.prefill}-token prefill)")
    print(f"{'precision':<10} {'engine':<22} {'decode':>8} {'gs x':>8} {'prefill':>9} {'gs x':>8} {'cos':>9}")
    for res in rows:
        dec, pre = res["decode"], res["prefill_last"]
        for name in dec:
            tok_s = args.new_tokens / dec[name]
            ratio = "" if name == "graphspec" else f"{dec[name] / dec['graphspec']:.2f}x"
            pre_ms = pre.get(name)
            pratio = "" if name == "graphspec" or pre_ms is None else f"{pre_ms / pre['graphspec']:.2f}x"
            cos = res.get("next_cos", {}).get(name)
            print(f"{res['precision']:<10} {name:<22} {tok_s:8.1f} {ratio:>8} "
                  f"{'' if pre_ms is None else f'{pre_ms * 1e3:9.0f}':>9} {pratio:>8} "
                  f"{'' if cos is None else f'{cos:.5f}':>9}")
        print(f"{'':<10} {'bound':<22} {res['roofline_tok_s']:8.0f} "
              f"{'(graphspec ' + format(args.new_tokens / dec['graphspec'] / res['roofline_tok_s'], '.0%') + ')':>8}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--decode-repeat", type=int, default=3)
    p.add_argument("--beam-new-tokens", type=int, default=32)
    p.add_argument("--no-search", dest="search", action="store_false", help="skip the sampling and beam-search rows")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-torch-compile", dest="torch_compile", action="store_false")
    p.add_argument("--no-peers", dest="peers", action="store_false", help="graphspec and Transformers only")
    p.add_argument("--no-load-probe", dest="load_probe", action="store_false")
    p.add_argument("--probe-load", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--step-overhead", action="store_true",
                   help="only time the decode step's fixed overhead (a model whose matmuls cost next to nothing)")
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
    if args.step_overhead:
        torch.set_num_threads(args.threads or torch.get_num_threads())
        report_overhead(step_overhead(Path(tempfile.mkdtemp(prefix="graphspec-bench-")), args.new_tokens,
                                      args.decode_repeat))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    sys.exit(main())
