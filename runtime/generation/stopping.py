"""Stopping criteria: `(input_ids [N, L], scores) -> bool [N]`, True for each row that is done.

As in Transformers, a row is done when it reaches `max_length` tokens, ends with an end token, or
ends with a stop string (stop_strings.py); caller-supplied criteria of the same shape join them.
"""
from __future__ import annotations

import torch


class MaxLength:
    def __init__(self, max_length: int):
        self.max_length = max_length

    def __call__(self, input_ids, scores=None):
        done = input_ids.shape[1] >= self.max_length
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class EndToken:
    """The row's last token is one of `eos` [E]."""

    def __init__(self, eos: torch.Tensor):
        self.eos = eos

    def __call__(self, input_ids, scores=None):
        return torch.isin(input_ids[:, -1], self.eos.to(input_ids.device))


def any_done(criteria, input_ids, scores) -> torch.Tensor:
    """bool [N]: rows that some criterion calls done (a criterion may also answer one bool for all)."""
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for criterion in criteria:
        done = done | torch.as_tensor(criterion(input_ids, scores), dtype=torch.bool, device=input_ids.device)
    return done
