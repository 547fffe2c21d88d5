"""ALiBi slopes (Press et al.), as Transformers builds them."""
from __future__ import annotations

import functools
import math

import torch


@functools.lru_cache(maxsize=32)
def _slopes(heads: int, device: torch.device) -> torch.Tensor:
    # transformers.models.bloom.modeling_bloom.build_alibi_tensor, step by step: fp32 powers of one base
    closest = 2 ** math.floor(math.log2(heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest) - 3))), device=device, dtype=torch.float32)
    powers = torch.arange(1, 1 + closest, device=device, dtype=torch.int32)
    slopes = torch.pow(base, powers)
    if closest != heads:
        extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest) - 3))), device=device, dtype=torch.float32)
        remaining = min(closest, heads - closest)
        extra_powers = torch.arange(1, 1 + 2 * remaining, 2, device=device, dtype=torch.int32)
        slopes = torch.cat([slopes, torch.pow(extra_base, extra_powers)], dim=0)
    return slopes


def alibi_slopes(ctx, heads: int, first: int = 0, count: int | None = None) -> torch.Tensor:
    """fp32 [count] on the context's device: the slopes of heads first..first+count-1 among `heads` (a
    tensor-parallel rank's heads; one tensor per head count and device, computed once)."""
    if heads < 1:
        raise ValueError(f"alibi_slopes needs at least one head, got {heads}")
    count = heads if count is None else int(count)
    if not 0 <= first <= first + count <= heads:
        raise ValueError(f"alibi_slopes: heads {first}..{first + count - 1} are not among {heads}")
    return _slopes(int(heads), torch.device(ctx.device))[int(first):int(first) + count]
