"""Ops that read where a sequence stands: positions, relative position buckets, the kept positions."""
from __future__ import annotations

import math

import torch


def last_positions(x: torch.Tensor, k: int) -> torch.Tensor:
    """The last k positions (axis 1) of x, or all of x when k is 0."""
    return x[:, -k:] if k and k < x.shape[1] else x


def keep_positions(x: torch.Tensor, ctx) -> torch.Tensor:
    return last_positions(x, ctx.keep_positions)


def positions(ids: torch.Tensor, ctx, seq: str | None = None) -> torch.Tensor:
    """Absolute positions past .. past + S - 1 of the S new tokens of `seq`, for every row of ids [B, S]."""
    start = ctx.seq(seq).past
    return torch.arange(start, start + ids.shape[-1], device=ids.device).expand(ids.shape[0], -1)


def relative_buckets(x: torch.Tensor, ctx, bidirectional: bool, num_buckets: int, max_distance: int,
                     seq: str | None = None) -> torch.Tensor:
    """int [S, past + S]: the bucket of (key position - query position) for the S new queries of x
    [B, S, ...] over every key of `seq` so far (its past ones cached)."""
    past, n = ctx.seq(seq).past, x.shape[1]
    query = torch.arange(past, past + n, device=x.device)[:, None]
    key = torch.arange(past + n, device=x.device)[None, :]
    rel = key - query
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).long() * num_buckets
        rel = rel.abs()
    else:
        rel = -torch.clamp(rel, max=0)
    exact = num_buckets // 2
    far = exact + (torch.log(rel.float() / exact) / math.log(max_distance / exact) * (num_buckets - exact)).long()
    far = torch.clamp(far, max=num_buckets - 1)
    return buckets + torch.where(rel < exact, rel, far)
