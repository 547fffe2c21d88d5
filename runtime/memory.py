"""What a request would allocate, compared with what the device has, before anything is allocated:
a config whose params cannot fit, a generation whose buffers cannot. Estimates, not accounting: they
catch the absurd (a billion layers, a billion new tokens) with an error instead of an allocation that
takes the machine down or fails deep inside torch."""
from __future__ import annotations

import os

import torch

from runtime.config import describe
from runtime.errors import ConfigError
from runtime.expr import ExprError

GiB = 2**30


def available_bytes(device) -> int | None:
    """Memory a new allocation on `device` can still get: free GPU memory, or the host's available
    memory (MemAvailable); None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fits(need: int, device) -> tuple[bool, str]:
    """(whether `need` bytes fit on `device`, the comparison in words)."""
    have = available_bytes(device)
    if have is None or need <= have:
        return True, ""
    return False, f"{need / GiB:.1f} GiB, and {torch.device(device)} has {have / GiB:.1f} GiB available"


# bytes a param tensor costs besides its elements while the model is built: its module and tensor
# objects (an nn.Linear with its Parameter is ~2 KiB of Python objects), so a billion tiny layers count too
TENSOR_OVERHEAD = 2048


def param_footprint(interface, config: dict, head: str | None) -> tuple[int, int, list[str]]:
    """(elements, tensors, problems) of the params a config gives the interface's tensors (the trunk's
    and `head`'s): each shape evaluated, each repeat counted, tied tensors once. A problem is a dim or
    count that is not a whole number >= 1 (>= 0 for a count), named by tensor and config values."""
    elements = tensors = 0
    problems: list[str] = []

    for t in interface.tensors:
        if t.head is not None and t.head != head:
            continue
        try:
            if not all(c.evaluate(config) for c in t.when):
                continue
            if t.tied_to is not None and (t.tied_when is None or t.tied_when.evaluate(config)):
                continue
        except (ExprError, TypeError, ValueError):
            continue      # a condition the config cannot decide is reported where the tensor is loaded
        count = 1
        for var, expr in t.repeat:
            n = _evaluate(expr, config)
            if not isinstance(n, int) or n < 0:
                problems.append(f"{t.name}: the count of {var}, {describe(expr, config)}, is {n!r}; expected a whole number >= 0")
                n = 0
            count *= n
        size = 1
        for i, expr in enumerate(t.shape):
            d = _evaluate(expr, config)
            if not isinstance(d, int) or d < 1:
                problems.append(f"{t.name}: dim {i}, {describe(expr, config)}, is {d!r}; expected a whole number >= 1")
                d = 0
            size *= d
        elements += count * size
        tensors += count
    return elements, tensors, problems


def _evaluate(expr, config):
    try:
        value = expr.evaluate(config)
    except (ExprError, TypeError, ValueError, ZeroDivisionError, OverflowError) as err:
        return f"not computable ({err})"
    return value


def check_model_size(interface, config: dict, dtype: torch.dtype, device, head: str | None, source: str,
                     shards: int = 1) -> None:
    """A ConfigError, before anything is built, when the config gives a param a dim < 1 or a negative
    count, or when the params (split over `shards` ranks) cannot fit in the device's memory."""
    elements, tensors, problems = param_footprint(interface, config, head)
    if problems:
        raise ConfigError(f"{source}: sizes that make no model:\n" + "\n".join(problems[:20]))
    need = (elements * torch.empty((), dtype=dtype).element_size() + tensors * TENSOR_OVERHEAD) // shards
    ok, why = fits(need, device)
    if not ok:
        raise ConfigError(f"{source}: the model it describes has {elements:,} parameters in {tensors:,} tensors "
                          f"({dtype}): about {why}")
