"""Guards for tests of hostile input: a hang becomes a test failure, not a stuck suite.

`no_hang` is a hang detector, not a speed check: its limit is far above what any of the guarded calls
takes (milliseconds), and only a call that would otherwise run for minutes or forever (a blocked open
of a FIFO, a read of /dev/zero, a backtracking match) reaches it. `peak_bytes` measures how far a call
raises the process's memory; its limit too is far above any real input, and reached only by a
blow-up (a header that makes us allocate terabytes, an alias bomb).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import tracemalloc

HANG_SECONDS = 60


class Hung(AssertionError):
    pass


@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS, what: str = "the call"):
    """Fail with Hung if the block runs longer than `seconds` (main thread only: uses SIGALRM, which
    also interrupts a blocking system call such as open() of a FIFO)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise Hung(f"{what} did not finish within {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def peak_bytes(fn, *args, **kwargs) -> tuple[object, int]:
    """(what fn returned or the exception it raised, how far the process's resident memory peaked
    above where it was). The kernel's peak (VmHWM) is reset first through /proc/self/clear_refs,
    which costs nothing while fn runs; tracemalloc, the portable fallback, makes it ~3x slower."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base, measure = _vm_kib("VmRSS"), lambda: (_vm_kib("VmHWM") - base) * 1024
    except OSError:
        tracemalloc.start()
        base, measure = tracemalloc.get_traced_memory()[0], lambda: tracemalloc.get_traced_memory()[1] - base
    try:
        result = fn(*args, **kwargs)
    except Exception as err:   # the caller decides which exceptions are allowed
        result = err
    peak = measure()
    if tracemalloc.is_tracing():
        tracemalloc.stop()
    return result, peak


# -- property-based and fuzz tests ------------------------------------------------------------------
# The suite runs a fixed, reproducible set of examples per fuzzer (a few seconds each);
# GRAPHSPEC_FUZZ_EXAMPLES=N runs N random examples per fuzzer instead, remembering failures in
# .hypothesis/ so that a rerun replays them first. A minimised failure becomes an explicit
# regression case next to the fuzzer that found it.
FUZZ_EXAMPLES = int(os.environ.get("GRAPHSPEC_FUZZ_EXAMPLES") or 0)
MEMORY_LIMIT = 512 * 2**20   # per example: far above what a real spec, header or manifest needs


def fuzz(examples: int):
    """Hypothesis settings for a fuzzer that runs `examples` examples in the suite."""
    from hypothesis import HealthCheck, settings
    return settings(max_examples=FUZZ_EXAMPLES or examples, deadline=None, derandomize=not FUZZ_EXAMPLES,
                    database=None if not FUZZ_EXAMPLES else settings.default.database,
                    suppress_health_check=list(HealthCheck))


def only_our_errors(fn, *args, allowed: tuple[type, ...], **kwargs):
    """Run fn on hostile input: it returns, or raises one of `allowed`; it neither hangs nor allocates
    more than MEMORY_LIMIT. Returns what fn returned or raised."""
    with no_hang(what=getattr(fn, "__name__", "the call")):
        result, peak = peak_bytes(fn, *args, **kwargs)
    if isinstance(result, Exception) and not isinstance(result, allowed):
        raise AssertionError(f"{type(result).__name__} is not one of our errors: {result}") from result
    assert peak < MEMORY_LIMIT, f"allocated {peak / 2**20:.0f} MiB on one input"
    return result
