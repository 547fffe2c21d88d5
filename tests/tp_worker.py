"""One rank of the tensor-parallel tests (tests/test_tensor_parallel_ranks.py starts them, as torchrun
would: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment).

`python -m tests.tp_worker JOBS OUT`: JOBS is a JSON file {"rss": {"folder", "spec"} or null, "models":
[{"name", "folder", "spec", "kind", "quantization" (optional)}]} (the spec given, ranks skip recognising it). The rank writes
OUT/rank<r>.pt: each model's logits and greedy tokens (tests/tp_inputs.py makes the inputs), what
saving a split model says, and for the "rss" checkpoint, loaded first, its resident memory right before
`runtime.load` and its peak while loading, reading every weight it holds and running one forward pass.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import runtime
from compiler.pipeline import compile_spec
from runtime.artifact import open_artifact
from tests.tp_inputs import run_model


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    """Start the peak resident size over from now (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_bytes() -> int:
    """The peak resident size since `reset_peak` (VmHWM). Not getrusage's ru_maxrss: that also keeps the
    peak of the image this process replaced at exec, a fork of the test process (hundreds of MB)."""
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def main(jobs_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    jobs = json.loads(Path(jobs_path).read_text())
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result: dict = {}
    if jobs.get("rss") and Path("/proc/self/clear_refs").exists():    # Linux: peaks can be measured from now
        # compiled first (a cache hit that still imports the compiler): the window measures loading alone
        folder = Path(jobs["rss"]["folder"])
        artifact = compile_spec(jobs["rss"]["spec"], options={"tp": dist.get_world_size()}).directory
        open_artifact(artifact)       # model.py imported (and what it imports) before the window too
        dist.barrier()
        reset_peak()
        before = resident_bytes()
        model = runtime.load(artifact, folder, tp_plan="auto")
        for p in model.parameters():  # every page of every weight this rank holds, resident
            p.sum()
        run_model(model, "decoder", forward_only=True)
        result["rss"] = {"before": before, "peak": peak_bytes()}
        del model
    for job in jobs["models"]:
        model = runtime.from_pretrained(job["folder"], spec=job["spec"], tp_plan="auto",
                                        quantization=job.get("quantization"))
        result[job["name"]] = run_model(model, job["kind"])
    if jobs["models"]:
        try:
            runtime.save_pretrained(model, Path(out_dir) / f"saved{rank}")
        except runtime.CheckpointError as err:
            result["save"] = str(err)
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
