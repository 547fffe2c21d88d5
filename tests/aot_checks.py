"""What every ahead-of-time compiled kernel job must show (compiler/triton/aot.py's metadata)."""
from __future__ import annotations


def assert_compiled(compiled: dict, job: str, targets, dtypes=("fp32", "bf16"), warps: int = 4) -> None:
    """PTX and a cubin for each target and dtype, the warps asked for, shared memory within an H100's 228 KiB."""
    for target in targets:
        for dtype in dtypes:
            meta = compiled[job][target][dtype]
            assert meta["ptx_bytes"] > 0 and meta["cubin_bytes"] > 0, (job, target, dtype)
            assert meta["num_warps"] == warps
            assert 0 <= meta["shared"] <= 228 * 1024, (job, target, dtype, meta)
