"""Shared checks for encoder specs: every head against its Transformers class on a padded batch."""
from __future__ import annotations

import torch

TOL = 1e-4


def token_batch(vocab: int, batch: int = 3, length: int = 10, seed: int = 0, pad_id: int = 0, low: int = 3):
    """Random ids with row 1 right-padded by 4 and row 2 by 7, the padding set to `pad_id`."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, vocab, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0
    mask[2, -7:] = 0
    ids[mask == 0] = pad_id
    types = torch.zeros_like(ids)
    types[:, length // 2:] = 1
    return ids, mask, types


def max_diff(ours, ref, fields, mask=None) -> dict[str, float]:
    """Max abs difference per output field; with `mask`, over real (unpadded) token positions only
    where the field has a sequence dim (what a padded position holds is not specified)."""
    out = {}
    for f in fields:
        a, b = ours[f].float(), getattr(ref, f).float()
        assert a.shape == b.shape, f"{f}: {tuple(a.shape)} vs {tuple(b.shape)}"
        if mask is not None and a.dim() >= 2 and a.shape[:2] == mask.shape:
            a, b = a[mask.bool()], b[mask.bool()]
        out[f] = (a - b).abs().max().item()
    return out
