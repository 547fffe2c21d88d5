"""The model protocol the decoding loops run on: a KV cache they can fill, extend, reorder and fork.

A model runs the prompt once (`prefill`), then one token per row per step (`step`). Beam search
keeps `num_beams` rows per input row and, after each step, tells the model which old row each new
row continues (`reorder_cache`); several rows per input row (beams, returned sequences) start from
one prompt, so the prompt's cache is copied to them (`fork`) instead of being computed again.
"""
from __future__ import annotations

from typing import Protocol

import torch


class Decoder(Protocol):
    is_encoder_decoder: bool     # True: `prefill` takes the source and the decoder's start tokens
    device: torch.device

    def prefill(self, prompt: torch.Tensor, mask: torch.Tensor | None, max_length: int,
                target_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Run the prompt ([B, S], mask [B, S] with 0 at padding, or None) into a cache that can grow to
        `max_length` tokens per row; an encoder-decoder runs the source through its encoder and
        `target_prefix` [B, S_dec] through its decoder. Returns the next-token logits [B, V]."""
        ...

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row ([N]) and return the next-token logits [N, V]."""
        ...

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Row i of the cache becomes what row beam_idx[i] was ([N] long), in place."""
        ...

    def fork(self, n: int) -> None:
        """Each row becomes n consecutive copies of itself (row i -> rows i*n ... i*n + n - 1)."""
        ...

    def close(self) -> None:
        """Release the cache and anything the model holds for this generation."""
        ...
