"""Guards for tests of hostile input: a hang becomes a test failure, not a stuck suite.

`no_hang` is a hang detector, not a speed check: its limit is far above what any of the guarded calls
takes (milliseconds), and only a call that would otherwise run for minutes or forever (a blocked open
of a FIFO, a read of /dev/zero, a backtracking match) reaches it. `peak_python_bytes` measures what a
call allocates through Python's allocator (tracemalloc), which is deterministic for a given input.
"""
from __future__ import annotations

import contextlib
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


def peak_python_bytes(fn, *args, **kwargs) -> tuple[object, int]:
    """(what fn returned or the exception it raised, the peak bytes Python allocated meanwhile)."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        result = fn(*args, **kwargs)
    except Exception as err:   # the caller decides which exceptions are allowed
        result = err
    peak = tracemalloc.get_traced_memory()[1] - base
    if not was_tracing:
        tracemalloc.stop()
    return result, peak
