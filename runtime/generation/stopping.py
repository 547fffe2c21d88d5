"""Stopping criteria: `(ids [N, L], scores) -> bool [N]`, True for each row that is done.

As in Transformers, a row is done when it reaches `max_length` tokens, ends with an end token, or
ends with a stop string (stop_strings.py); caller-supplied criteria of the same shape join them.
"""
from __future__ import annotations

import torch


class MaxLength:
    def __init__(self, max_length: int):
        self.max_length = max_length

    def __call__(self, ids, scores=None):
        done = ids.shape[1] >= self.max_length
        return torch.full((ids.shape[0],), done, dtype=torch.bool, device=ids.device)


class EndToken:
    """The row's last token is one of `eos` [E]."""

    def __init__(self, eos: torch.Tensor):
        self.eos = eos

    def __call__(self, ids, scores=None):
        return torch.isin(ids[:, -1], self.eos.to(ids.device))


def any_done(criteria, ids, scores) -> torch.Tensor:
    """bool [N]: rows that some criterion calls done (a criterion may also answer one bool for all)."""
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for criterion in criteria:
        done = done | torch.as_tensor(criterion(ids, scores), dtype=torch.bool, device=ids.device)
    return done
