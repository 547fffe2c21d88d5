"""What a request would allocate, compared with what the device has, before anything is allocated:
a config whose params cannot fit, a generation whose buffers cannot. Estimates, not accounting: they
catch the absurd (a billion layers, a billion new tokens) with an error instead of an allocation that
takes the machine down or fails deep inside torch."""
from __future__ import annotations

import os

import torch

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
