"""The Decoder protocol (protocol.py) over today's CompiledModel: its `_run`, ForwardContext and KVCache.

Kept apart from the loops because the runtime is being rewritten around the interface contract;
only this file knows how a CompiledModel runs tokens through its cache. The cache is allocated once
per generation at its final length (per attention op, [rows, kv heads, max_length, head dim]) and
written in place; `reorder_cache` permutes its filled part in place, `fork` copies the prompt's part
to each row's beams or samples. An encoder-decoder runs its static blocks (the encoder, every layer's
cross-attention keys and values) once per input row and shares their outputs with the forked rows.
"""
from __future__ import annotations

import torch

from runtime.context import ForwardContext, KVCache
from runtime.errors import GenerationError
from runtime.model import bidirectional, positions_from_mask, static_modules


def _map_tensors(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


class _StaticOutputs:
    """While installed, each static block runs on its first call and hands that output back after."""

    def __init__(self, model):
        self.modules = list(static_modules(model.spec, model.spec.model, model.net))
        self.outputs: dict = {}
        for m in self.modules:
            m.forward = self._once(m, m.forward)

    def _once(self, module, run):
        def forward(*args):
            if module not in self.outputs:
                self.outputs[module] = run(*args)
            return self.outputs[module]
        return forward

    def apply(self, fn) -> None:
        self.outputs = {m: _map_tensors(out, fn) for m, out in self.outputs.items()}

    def remove(self) -> None:
        for m in self.modules:
            m.__dict__.pop("forward", None)


class CompiledDecoder:
    """A CompiledModel as a Decoder for one generation (use a fresh one per call)."""

    def __init__(self, model):
        self.model = model
        self.device = model.device
        self.is_encoder_decoder = "decoder_input_ids" in model.input_names
        if not self.is_encoder_decoder and bidirectional(model.spec):
            raise GenerationError(f"{model.spec.name} is a bidirectional encoder (its attention is not causal); "
                                  "it has no next-token distribution to generate from")
        self.cache: KVCache | None = None
        self.static: _StaticOutputs | None = None
        self.tokens = self.padding = self.next_position = None
        self.source = self.source_padding = None
        self.past = 0
        self.group = 1          # rows per input row after fork: they share the static outputs

    def prefill(self, prompt, mask, max_length, target_prefix=None):
        rows = prompt if target_prefix is None else target_prefix
        batch, length = rows.shape
        self.capacity = max_length
        self.tokens = torch.empty(batch, max_length, dtype=torch.long, device=self.device)
        self.cache = KVCache(max_length)
        self.past = 0
        if self.is_encoder_decoder:
            self.source = prompt
            self.source_padding = None if mask is None else mask.bool()
            self.static = _StaticOutputs(self.model)
        elif mask is not None:
            # the generated tokens are real: only the prompt part of the padding row can be False
            self.padding = torch.ones(batch, max_length, dtype=torch.bool, device=self.device)
            self.padding[:, :length] = mask.bool()
        return self._append(rows)

    def step(self, tokens):
        return self._append(tokens[:, None])

    def _positions(self, length: int, rows: int) -> torch.Tensor:
        if self.padding is not None:
            return positions_from_mask(self.padding[:, :length])
        return torch.arange(length, device=self.device).expand(rows, -1)

    def _run(self, ids, past: int):
        end = past + ids.shape[1]
        if self.is_encoder_decoder:
            ctx = ForwardContext(self.model.dtype, self.device, cache=self.cache, past_len=past,
                                 encoder_padding=self.source_padding, keep_positions=1)
            return self.model._run(self.source, None, ctx, decoder_input_ids=ids)["logits"][:, -1], None
        positions = (self._positions(end, ids.shape[0]) if past == 0
                     else self.next_position + torch.arange(ids.shape[1], device=self.device))
        padding = None if self.padding is None else self.padding[:, :end]
        ctx = ForwardContext(self.model.dtype, self.device, padding=padding, cache=self.cache, past_len=past,
                             keep_positions=1)
        return self.model._run(ids, positions, ctx)["logits"][:, -1], positions[:, -1:] + 1

    def _append(self, ids):
        end = self.past + ids.shape[1]
        self.tokens[:, self.past:end] = ids
        logits, self.next_position = self._run(ids, self.past)
        if self.cache.stale:
            # The cached keys no longer fit this step (LongRoPE switched factors): like Transformers,
            # run the whole sequence so far again into a fresh cache.
            self.cache = KVCache(self.capacity)
            logits, self.next_position = self._run(self.tokens[:, :end], 0)
        self.past = end
        return logits

    def reorder_cache(self, beam_idx):
        rows = self.tokens.shape[0]
        if torch.equal(beam_idx, torch.arange(rows, device=beam_idx.device)):
            return
        past = self.past
        for k, v in self.cache.slots.values():
            k[:, :, :past] = k[:, :, :past].index_select(0, beam_idx)
            v[:, :, :past] = v[:, :, :past].index_select(0, beam_idx)
        self.tokens[:, :past] = self.tokens[:, :past].index_select(0, beam_idx)
        if self.padding is not None:
            self.padding = self.padding.index_select(0, beam_idx)
        if self.next_position is not None:
            self.next_position = self.next_position.index_select(0, beam_idx)
        if self.is_encoder_decoder:
            # static outputs are per source: rows of one fork group share them, others must move
            same_group = torch.arange(rows, device=beam_idx.device) // self.group
            if not torch.equal(beam_idx // self.group, same_group):
                self.static.apply(lambda t: t.index_select(0, beam_idx))
                self.source = self.source.index_select(0, beam_idx)
                if self.source_padding is not None:
                    self.source_padding = self.source_padding.index_select(0, beam_idx)
                self.group = 1

    def fork(self, n: int):
        past = self.past
        for slot, (k, v) in list(self.cache.slots.items()):
            wide_k = k.new_empty((k.shape[0] * n, *k.shape[1:]))
            wide_v = v.new_empty((v.shape[0] * n, *v.shape[1:]))
            wide_k[:, :, :past] = k[:, :, :past].repeat_interleave(n, dim=0)
            wide_v[:, :, :past] = v[:, :, :past].repeat_interleave(n, dim=0)
            self.cache.slots[slot] = (wide_k, wide_v)
        self.tokens = self.tokens.repeat_interleave(n, dim=0)
        if self.padding is not None:
            self.padding = self.padding.repeat_interleave(n, dim=0)
        if self.next_position is not None:
            self.next_position = self.next_position.repeat_interleave(n, dim=0)
        if self.is_encoder_decoder:
            self.group *= n
            self.static.apply(lambda t: t.repeat_interleave(n, dim=0))
            self.source = self.source.repeat_interleave(n, dim=0)
            if self.source_padding is not None:
                self.source_padding = self.source_padding.repeat_interleave(n, dim=0)

    def close(self):
        if self.static is not None:
            self.static.remove()
        self.cache = self.static = None
