"""Choosing between equivalent CPU code paths by timing them on this machine, once per process.

What a CPU does fast is not written in any capability string we could trust (torch reports
"AVX512" both for CPUs whose bf16 GEMM is 3x slower than fp32 and for ones where it is faster), so
the choice is measured: each candidate runs on the same input, the fastest is kept.
"""
from __future__ import annotations

import functools
import time
from typing import Callable

import torch


def fastest(candidates: dict[str, Callable[[], object]], repeat: int = 3,
            clock: Callable[[], float] = time.perf_counter) -> tuple[str, object]:
    """The name of the candidate with the least best-of-`repeat` time, and its last result.

    Each candidate first runs once untimed (caches, lazily built layouts); then the candidates take
    turns, `repeat` rounds, so a burst of other work on the machine hits all of them alike, and each
    one's minimum is its least disturbed run. `clock=time.thread_time` counts only this thread's CPU
    time: immune to other processes, meaningful for single-threaded candidates."""
    results = {name: fn() for name, fn in candidates.items()}
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(repeat):
        for name, fn in candidates.items():
            start = clock()
            results[name] = fn()
            best[name] = min(best[name], clock() - start)
    name = min(best, key=best.get)
    return name, results[name]


@functools.cache
def reduced_precision_gemm_is_slow(dtype: torch.dtype) -> bool:
    """Whether a multi-row GEMM in `dtype` (bf16, fp16) runs slower on this CPU than the same GEMM
    over operands upcast to fp32 and rounded once (measured once per process, ~20 ms).

    Without AVX512-BF16 or AMX, torch's bf16 GEMM converts as it goes and runs ~3x below fp32
    (Ice Lake: 29 against 8.5 ms for 512 x 768 x 2048); with them it is the faster one. Measured on
    one thread in CPU time: what is compared is the instruction set, and a loaded machine (other
    processes taking the cores) must not decide it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 512, generator=g).to(dtype)
    w = torch.randn(512, 512, generator=g).to(dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        choice, _ = fastest({
            "native": lambda: torch.nn.functional.linear(x, w),
            "fp32": lambda: torch.nn.functional.linear(x.float(), w.float()).to(dtype),
        }, repeat=5, clock=time.thread_time)
    finally:
        torch.set_num_threads(threads)
    return choice == "fp32"
