"""The forward context: what attention needs besides q, k, v — the padding mask and the KV cache.

Built once per forward call, so masks are made once and shared by every layer, and the KV cache is
allocated once per generation at its final length and written in place at each step.
"""
from __future__ import annotations

import torch


class KVCache:
    """Per attention op (keyed by its module), k and v buffers of [B, Hkv, capacity, D]."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.slots: dict[object, tuple[torch.Tensor, torch.Tensor]] = {}
        self.regimes: dict[object, object] = {}
        self.stale = False

    def regime(self, name, value) -> None:
        """Record a choice the cached keys were computed under (LongRoPE's short or long factors).
        A later step making another choice leaves the cache stale: generation recomputes it."""
        if self.regimes.setdefault(name, value) != value:
            self.stale = True

    def update(self, slot, k: torch.Tensor, v: torch.Tensor, past: int):
        buffers = self.slots.get(slot)
        if buffers is None:
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            buffers = (k.new_empty(shape), v.new_empty(shape[:3] + (v.shape[3],)))
            self.slots[slot] = buffers
        end = past + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions, this step needs {end}")
        kb, vb = buffers
        kb[:, :, past:end] = k
        vb[:, :, past:end] = v
        return kb[:, :, :end], vb[:, :, :end]


class ForwardContext:
    """`padding` is [B, past + S] bool (True = a real token) or None when nothing is padded."""

    def __init__(self, dtype: torch.dtype, device, padding: torch.Tensor | None = None,
                 cache: KVCache | None = None, past_len: int = 0, encoder_padding: torch.Tensor | None = None,
                 keep_positions: int = 0):
        self.dtype, self.device = dtype, device
        # > 0: the model's per-position tail (final norm, LM head) runs on the last k positions only
        self.keep_positions = keep_positions
        self.padding, self.cache, self.past_len = padding, cache, past_len
        self.encoder_padding = encoder_padding      # [B, S_enc] bool of an encoder-decoder's source, or None
        self._masks: dict[tuple, object] = {}

    def encoder_mask(self, q_len: int, kv_len: int, causal: bool):
        """Mask for keys from the encoder's sequence: its padding only (None when unpadded)."""
        key = ("encoder", q_len, kv_len, bool(causal))
        if key not in self._masks:
            saved, self.padding = self.padding, self.encoder_padding
            try:
                self._masks[key] = self._build(q_len, kv_len, bool(causal), None)
            finally:
                self.padding = saved
        return self._masks[key]

    def attention_mask(self, q_len: int, kv_len: int, causal: bool, window: int | None):
        """None (attend everywhere), "causal" (the kernel's own causal mask), or a bool tensor
        [B or 1, 1, q_len, kv_len] with True where a query may attend."""
        key = (q_len, kv_len, bool(causal), window)
        if key not in self._masks:
            self._masks[key] = self._build(q_len, kv_len, bool(causal), window)
        return self._masks[key]

    def _build(self, q_len, kv_len, causal, window):
        windowed = window is not None and kv_len > window
        if self.padding is None and not windowed:
            if not causal or q_len == 1:
                return None
            if q_len == kv_len:
                return "causal"
        if q_len == 1 and causal and not windowed and bool(self.padding[:, kv_len - 1].all()):
            # A decode step: the one query is the newest token and real, so causality holds for every
            # key and the mask is the padding row itself, a view rather than new tensors per step.
            return self.padding[:, None, None, :kv_len]
        q_pos = torch.arange(kv_len - q_len, kv_len, device=self.device)[:, None]
        k_pos = torch.arange(kv_len, device=self.device)[None, :]
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=self.device)
        if causal:
            mask &= k_pos <= q_pos
        if window is not None:
            mask &= k_pos > q_pos - window
        mask = mask[None, None]
        if self.padding is not None:
            mask = mask & self.padding[:, None, None, :kv_len]
            # A padding query may see no key at all; give it its own position so softmax stays finite
            # (its output is never used, but NaN would spread through later ops on the same row).
            empty = ~mask.any(dim=-1, keepdim=True)
            if bool(empty.any()):
                mask = mask | (empty & (k_pos == q_pos)[None, None])
        return mask
