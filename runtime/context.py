"""The forward context: what the ops of a forward pass read besides their operands — per model-level
sequence (`S`, `S_ENC`) its padding, how many of its positions the KV cache already holds, and the
cache itself — and how many last positions the caller wants.

Built once per forward call, so masks are made once per sequence and shared by every layer; the KV
cache (only on the sequence being generated) is allocated once per generation at its final length
and written in place at each step.
"""
from __future__ import annotations

import torch


class KVCache:
    """Per attention op (keyed by its module), k and v buffers of [B, Hkv, capacity, D]."""

    def __init__(self, capacity: int, spare: dict | None = None):
        self.capacity = capacity
        self.slots: dict[object, tuple[torch.Tensor, torch.Tensor]] = {}
        # an earlier generation's buffers per slot, taken where they have the shape needed (their
        # values are never read: a step reads only the positions written before it)
        self.spare = spare or {}
        self.regimes: dict[object, object] = {}
        self.stale = False

    def regime(self, name, value) -> None:
        """Record a choice the cached keys were computed under (LongRoPE's short or long factors).
        A later step making another choice leaves the cache stale: generation recomputes it."""
        if self.regimes.setdefault(name, value) != value:
            self.stale = True

    def buffers(self, slot, k: torch.Tensor, v: torch.Tensor, past: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k and v buffers of `slot` (made at the first step), checked to hold k's positions after `past`."""
        buffers = self.slots.get(slot)
        if buffers is None:
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            shapes = (shape, shape[:3] + (v.shape[3],))
            spare = self.spare.pop(slot, None)
            if spare is not None and all(b.shape == s and b.dtype == t.dtype and b.device == t.device
                                         for b, s, t in zip(spare, shapes, (k, v))):
                buffers = spare
            else:
                buffers = (k.new_empty(shapes[0]), v.new_empty(shapes[1]))
            self.slots[slot] = buffers
        end = past + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions, this step needs {end}")
        return buffers

    def update(self, slot, k: torch.Tensor, v: torch.Tensor, past: int):
        kb, vb = self.buffers(slot, k, v, past)
        end = past + k.shape[2]
        kb[:, :, past:end] = k
        vb[:, :, past:end] = v
        return kb[:, :, :end], vb[:, :, :end]


class SequenceState:
    """One model-level sequence: `padding` bool [B, past + length] (True = a real token) or None when
    nothing is padded; `past` positions already in `cache` (0 and None without a cache); `last_real`:
    the caller knows the last position is a real token in every row (a generated one)."""

    __slots__ = ("padding", "past", "cache", "last_real")

    def __init__(self, padding: torch.Tensor | None = None, past: int = 0, cache: KVCache | None = None,
                 last_real: bool = False):
        self.padding, self.past, self.cache, self.last_real = padding, past, cache, last_real

    def key_span(self, length: int) -> int:
        """How many keys a tensor laid over the keys of a step of `length` new positions spans: those
        so far (past + length), but at a decode step (one new position, a KV cache) the whole cache,
        so that the step's shapes stay the same at every position (a recorded step replays). The
        attention reads the keys so far of such a tensor (a relative position bias, ALiBi's)."""
        return self.cache.capacity if self.cache is not None and length == 1 else self.past + length


EMPTY = SequenceState()


def tracing() -> bool:
    """torch.compile or torch.export is tracing: decisions on tensor values (is every position real?)
    would become guards on data, so the general path is taken, whose result is the same."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


class ForwardContext:
    def __init__(self, dtype: torch.dtype, device, sequences: dict[str, SequenceState] | None = None,
                 keep_positions: int = 0, training: bool = False, group=None, record: tuple[str, ...] = ()):
        self.dtype, self.device = dtype, device
        # tensor parallelism: the process group the model's collectives run on (None: one process)
        self.group = group
        self.sequences = sequences or {}
        # > 0: the model's per-position tail (final norm, LM head) runs on the last k positions only
        self.keep_positions = keep_positions
        # the model trains (`model.train()`): dropout drops (ops.dropout, attention's); in evaluation it is the identity
        self.training = training
        # what the caller asked to see besides the outputs: "hidden_states" (each repeated layer's
        # carried value, `ctx.layer`), "attentions" (each attention's probabilities)
        self.recording = "hidden_states" in record
        self.record_attentions = "attentions" in record
        self.stack: str | None = None           # the repeated layers running now (set by the emitted loop)
        self.hidden: dict[str, list] = {}       # stack -> the carried value entering each layer, then leaving the last
        self.last: dict[str, torch.Tensor] = {}     # stack -> what ends its hidden states instead (a final norm's output)
        self.attentions: dict[tuple, list] = {}     # (stack, keys' sequence) -> each attention's probabilities
        self._masks: dict[tuple, object] = {}
        # the most keys along a sequence for which this forward's choices on positions hold (a sliding
        # window not yet full masks nothing): a recorded decode step replays only that far
        self.holds_until: int | None = None

    def record_layer(self, stack: str, value: torch.Tensor) -> None:
        self.hidden.setdefault(stack, []).append(value)

    def record_last(self, stack: str, value: torch.Tensor) -> None:
        if self.recording:
            self.last[stack] = value

    def record_attention(self, seq: str | None, probs: torch.Tensor) -> None:
        self.attentions.setdefault((self.stack, seq), []).append(probs)

    def records(self) -> dict[str, tuple]:
        """Transformers' names: `hidden_states` and `attentions` for a model with one stack of layers
        (and one sequence of keys); with several, each prefixed by its stack's param (`dec_layers_`) and
        suffixed by the keys' sequence past the first."""
        out = {}
        stacks = list(dict.fromkeys([*self.hidden, *(s for s, _ in self.attentions)]))

        def name(stack, kind):
            return kind if len(stacks) == 1 else f"{stack.rpartition('.')[2]}_{kind}"
        for stack, values in self.hidden.items():
            values = list(values)
            if stack in self.last:
                values[-1] = self.last[stack]
            out[name(stack, "hidden_states")] = tuple(values)
        seen: dict[str, int] = {}
        for (stack, seq), values in self.attentions.items():
            base = name(stack, "attentions")
            seen[base] = seen.get(base, 0) + 1
            out[base if seen[base] == 1 else f"{base}_{str(seq).lower()}"] = tuple(values)
        return out

    def seq(self, name: str | None) -> SequenceState:
        """The state of a sequence; an empty one (no padding, no past, no cache) for None (keys along
        no input sequence, such as image patches) or a sequence this forward does not carry."""
        return self.sequences.get(name, EMPTY) if name is not None else EMPTY

    def mask(self, seq: str | None, q_len: int, kv_len: int, causal: bool, window: int | None = None):
        """For keys along `seq`: None (attend everywhere), "causal" (the kernel's own causal mask), or a
        bool tensor [B or 1, 1, q_len, kv_len] with True where a query may attend."""
        if window is not None and kv_len <= window:
            self.holds_until = window if self.holds_until is None else min(self.holds_until, window)
        if tracing():    # symbolic sizes do not hash; the traced graph holds each mask's ops anyway
            return _build(self.seq(seq), self.device, q_len, kv_len, bool(causal), window)
        key = (seq, q_len, kv_len, bool(causal), window)
        if key not in self._masks:
            self._masks[key] = _build(self.seq(seq), self.device, q_len, kv_len, bool(causal), window)
        return self._masks[key]


def _build(state: SequenceState, device, q_len, kv_len, causal, window):
    padding = state.padding
    windowed = window is not None and kv_len > window
    if padding is None and not windowed:
        if not causal or q_len == 1:
            return None
        if q_len == kv_len:
            return "causal"
    if q_len == 1 and causal and not windowed and not tracing() and (
            (state.last_real and kv_len == padding.shape[1]) or bool(padding[:, kv_len - 1].all())):
        # A decode step: the one query is the newest token and real, so causality holds for every
        # key and the mask is the padding row itself, a view rather than new tensors per step.
        return padding[:, None, None, :kv_len]
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if causal:
        mask &= k_pos <= q_pos
    if window is not None:
        mask &= k_pos > q_pos - window
    mask = mask[None, None]
    if padding is not None:
        mask = mask & padding[:, None, None, :kv_len]
        # A padding query may see no key at all; give it its own position so softmax stays finite
        # (its output is never used, but NaN would spread through later ops on the same row). Done
        # whether or not some query is so (the same mask where none is), so that no decision reads
        # the mask's values: a recorded decode step (a cross-attention over a padded encoder
        # output) would be refused at that read
        empty = ~mask.any(dim=-1, keepdim=True)
        mask = mask | (empty & (k_pos == q_pos)[None, None])
    return mask
