"""Ops that read where a sequence stands: positions, relative position buckets, the kept positions."""
from __future__ import annotations

import math

import torch

from runtime import native
from runtime.context import tracing


def last_positions(x: torch.Tensor, k: int) -> torch.Tensor:
    """The last k positions (axis 1) of x, or all of x when k is 0."""
    return x[:, -k:] if k and k < x.shape[1] else x


def keep_positions(x: torch.Tensor, ctx) -> torch.Tensor:
    return last_positions(x, ctx.keep_positions)


def _step_positions(state, n: int, device) -> torch.Tensor:
    """int64 past .. past + n - 1 of a sequence. Along the sequence being generated (it has a KV
    cache) on the CPU, by a C call told `past` as a position (runtime.native.Position), so a recorded
    decode step computes from it the positions of each step it replays (an arange's bounds would be
    baked into the recording, and keep the steps eager)."""
    if state.cache is not None and device.type == "cpu" and not tracing() and native.available():
        out = torch.empty(n, dtype=torch.long)
        native.call(native.library().gs_positions, out, native.Position(state.past), n)
        return out
    return torch.arange(state.past, state.past + n, device=device)


def positions(ids: torch.Tensor, ctx, seq: str | None = None) -> torch.Tensor:
    """Absolute positions past .. past + S - 1 of the S new tokens of `seq`, for every row of ids [B, S]."""
    return _step_positions(ctx.seq(seq), ids.shape[-1], ids.device).expand(ids.shape[0], -1)


def relative_buckets(x: torch.Tensor, ctx, bidirectional: bool, num_buckets: int, max_distance: int,
                     seq: str | None = None) -> torch.Tensor:
    """int [S, K]: the bucket of (key position - query position) for the S new queries of x [B, S,
    ...] over the keys of `seq` (K: SequenceState.key_span — every key so far, its past ones cached;
    at a decode step the whole KV cache, whose keys past the query's the attention never reads)."""
    state, n = ctx.seq(seq), x.shape[1]
    query = _step_positions(state, n, x.device)[:, None]
    key = torch.arange(state.key_span(n), device=x.device)[None, :]
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
