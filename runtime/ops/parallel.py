"""Tensor parallelism at run time: what the shard pass's ops call (compiler/ops/parallel.py).

The process group comes from the forward context (`ctx.group`, set by a model loaded with a tp plan,
runtime/parallel); without one (a single process) the collectives are the identity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _world(ctx):
    group = getattr(ctx, "group", None)
    if group is None:
        return None, 1
    import torch.distributed as dist
    return group, dist.get_world_size(group)


def all_reduce(x: torch.Tensor, ctx) -> torch.Tensor:
    """The sum over the ranks of their partial sums x, on every rank."""
    group, n = _world(ctx)
    if n == 1:
        return x
    import torch.distributed as dist
    x = x.contiguous()
    dist.all_reduce(x, group=group)
    return x


def all_gather(x: torch.Tensor, ctx, dim: int, size: int) -> torch.Tensor:
    """The ranks' consecutive shares of a dim joined (`size` in all). Shares are ceil(size / ranks)
    long except at the end, so each is padded to that length for the collective and the join is cut."""
    group, n = _world(ctx)
    if n == 1:
        return x
    import torch.distributed as dist
    dim %= x.dim()
    chunk = -(-size // n)
    if x.shape[dim] < chunk:
        pad = list(x.shape)
        pad[dim] = chunk - x.shape[dim]
        x = torch.cat([x, x.new_zeros(pad)], dim=dim)
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=dim).narrow(dim, 0, size)


def embedding_shard(ids: torch.Tensor, weight: torch.Tensor, start: int) -> torch.Tensor:
    """Rows of a table split by rows, this rank holding rows start.. of it: the rows found here, zeros
    for ids held elsewhere (the all-reduce after it adds the one rank holding each)."""
    local = ids - start
    here = (local >= 0) & (local < weight.shape[0])
    if weight.shape[0] == 0:
        return weight.new_zeros(*ids.shape, weight.shape[1])
    rows = F.embedding(torch.where(here, local, torch.zeros_like(local)), weight)
    return rows.masked_fill(~here[..., None], 0)
