"""The Decoder protocol (protocol.py) over a CompiledModel, driven by its runtime contract alone.

The contract names what is generated (`generate.tokens` along `generate.seq`, read from
`generate.logits`; a `start` token for an encoder-decoder) and the static modules (an encoder,
cross-attention keys and values) that see the same inputs at every step. The KV cache lives on the
generated sequence only: allocated once per generation at its final length ([rows, kv heads,
max_length, head dim] per attention op; rounded up to 64 positions where steps may be replayed,
and then left to the model's next generation of that shape) and written in place; `reorder_cache`
permutes its filled part in place, `fork` copies the prompt's part to each row's beams or samples.
Static modules run once per input row and share their outputs with the forked rows.
"""
from __future__ import annotations

import torch

from runtime import native, step_capture
from runtime.context import KVCache, SequenceState
from runtime.errors import GenerationError
from runtime.expr import ExprError
from runtime.memory import fits
from runtime.model import modules_at

# bytes per row and position the loop and this adapter hold besides the KV cache: the tokens so far,
# the loop's output rows (int64 each), the padding row (bool), rounded up
_TOKEN_BUFFER_BYTES = 24
# A generation whose steps may be replayed sizes its KV cache and padding row in multiples of this
# many positions: generations of nearby lengths then have buffers of one shape, and one can run on
# the buffers the last one left (step_capture.Spare) and replay a step earlier.
_CAPACITY_STEP = 64


def _map_tensors(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


class _StaticOutputs:
    """While installed, each static module runs on its first call and hands that output back after."""

    def __init__(self, net, paths):
        self.modules = [m for path in paths for m in modules_at(net, path)]
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
    """A CompiledModel as a Decoder for one generation, bound to one call's inputs: `args` / `kwargs`
    are those of a forward call (the contract's inputs and masks). `tokens` and `mask` are what the
    generation loop starts from (the prompt, or an encoder-decoder's source), `target_prefix` the
    caller's decoder tokens, if any."""

    def __init__(self, model, args, kwargs):
        g, name = model.contract.generate, model.interface.name
        if g is None:
            raise GenerationError(f"{name} cannot generate: {model.contract.no_generate}")
        if g.logits not in model.output_names:
            raise GenerationError(f"{name} with the '{model.head}' head outputs {', '.join(model.output_names)}; "
                                  f"generate reads {g.logits}")
        self.model, self.g = model, g
        self.device = model.device
        self.is_encoder_decoder = g.start is not None
        feeds, masks = model._bind(args, kwargs, generated=g.tokens)
        lengths = model._lengths(feeds)
        paddings = model._paddings(masks, feeds, lengths)
        self.target_prefix = feeds.pop(g.tokens, None) if self.is_encoder_decoder else None
        if self.is_encoder_decoder:
            if g.seq in paddings:
                raise GenerationError(f"{name} generates {g.tokens}: its mask is made while generating, not given")
            first = model.contract.callers[0]
            self.tokens, self.mask = feeds[first.name], _as_mask(paddings.get(first.seq))
        else:
            if g.tokens not in feeds:
                raise GenerationError(f"{name} generates from {g.tokens}: pass it")
            self.tokens = feeds.pop(g.tokens)
            self.mask = _as_mask(paddings.pop(g.seq, None))
        self.feeds = feeds                        # every other input, at the input batch size
        self.others = paddings                    # every other sequence's padding
        self.cache: KVCache | None = None
        self.static: _StaticOutputs | None = None
        self.tokens_so_far = self.padding = None
        self.past = 0
        self.group = 1          # rows per input row after fork: they share the static outputs
        self.capture: step_capture.StepCapture | None = None

    def check_room(self, rows: int, max_length: int) -> None:
        """Refuse, before allocating, a generation of `rows` rows of `max_length` tokens that runs past a
        position table of the model or whose buffers (tokens, padding, KV cache) cannot fit."""
        model, name = self.model, self.model.interface.name
        for inp in model.contract.inputs:
            bound = model.input_bounds.get(inp.name)
            if inp.seq == self.g.seq and inp.source != "caller" and bound is not None and max_length > bound[0]:
                raise GenerationError(f"generate(): max_length {max_length} (prompt + new tokens) runs past the "
                                      f"{bound[0]} ({bound[1]}) positions {name}'s {inp.name} can take; ask for "
                                      f"at most {bound[0]} tokens in all")
        width = 0
        if self.g.cache_width is not None:
            try:
                width = int(self.g.cache_width.evaluate(model.config))
            except (ExprError, TypeError, ValueError):
                width = 0
        per_position = width * torch.empty((), dtype=model.dtype).element_size() + _TOKEN_BUFFER_BYTES
        ok, why = fits(rows * max_length * per_position, self.device)
        if not ok:
            raise GenerationError(f"generate(): max_length {max_length} (prompt + new tokens) for {rows} row(s) "
                                  f"needs about {why}; ask for fewer new tokens")

    def prefill(self, prompt, mask, max_length, target_prefix=None):
        rows = prompt if target_prefix is None else target_prefix
        batch, length = rows.shape
        self.check_room(batch, max_length)
        self.max_length = max_length
        capturable = self._capturable()
        self.capacity = -(-max_length // _CAPACITY_STEP) * _CAPACITY_STEP if capturable else max_length
        self.prompt_length = length
        self.tokens_so_far = torch.empty(batch, max_length, dtype=torch.long, device=self.device)
        spare = self._take_spare(batch, mask is not None and not self.is_encoder_decoder) if capturable else None
        self.cache = KVCache(self.capacity, spare and spare.slots)
        self.past = 0
        # the decoding loops copy a step's logits before they ask for the next (sampling.py, beam.py):
        # replayed steps may hand out the buffers they write
        self.capture = self.model.step_capture = (
            step_capture.StepCapture(spare and spare.tape, copies=False) if capturable else None)
        if self.is_encoder_decoder:
            self.static = _StaticOutputs(self.model.net, self.model.contract.static)
            if mask is not None:
                self.others[self.model.contract.callers[0].seq] = mask.bool()
        elif mask is not None:
            # the generated tokens are real: only the prompt part of the padding row can be False
            if spare is not None:
                self.padding = spare.padding.fill_(True)
            else:
                self.padding = torch.ones(batch, self.capacity, dtype=torch.bool, device=self.device)
            self.padding[:, :length] = mask.bool()
        return self._append(rows)

    def _spare_key(self, rows: int, padded: bool) -> tuple:
        return rows, self.capacity, padded

    def _take_spare(self, rows: int, padded: bool) -> step_capture.Spare | None:
        """The buffers the model's last replayed generation left, if they have this one's shapes.
        Taken off the model in one step (dict.pop), so a generation running meanwhile cannot share them."""
        spare = vars(self.model).pop("_decode_spare", None)
        return spare if spare is not None and spare.key == self._spare_key(rows, padded) else None

    def _capturable(self) -> bool:
        """Whether decode steps may be recorded and replayed (step_capture.py): on the CPU, without
        autograd, training, a process group or torch.compile — what a recording would freeze or
        cannot see — and with no module observed by a hook or a replaced forward, which a replay
        would not call."""
        model = self.model
        # without the C kernels the cache is written by indexed copies: no two steps alike, no replay
        return (step_capture.enabled() and native.available() and self.device.type == "cpu"
                and not torch.is_grad_enabled() and not model.training and model.group is None
                and not model.network_compiled and not _observed(model.net))

    def step(self, tokens):
        return self._append(tokens[:, None])

    def _run(self, ids, past: int):
        end = past + ids.shape[1]
        states = {seq: SequenceState(p) for seq, p in self.others.items()}
        # past the prompt every position is a generated token, real in every row
        states[self.g.seq] = SequenceState(None if self.padding is None else self.padding[:, :end], past, self.cache,
                                           last_real=past >= self.prompt_length)
        step = None
        if self.capture is not None and ids.shape[1] == 1 and past:
            def step(net, inputs, ctx):
                return self.capture.run(net, inputs, ctx, past, self.capacity)
        out = self.model._run({**self.feeds, self.g.tokens: ids}, states, keep=1, step=step)
        return out[self.g.logits][:, -1]

    def _append(self, ids):
        end = self.past + ids.shape[1]
        self.tokens_so_far[:, self.past:end] = ids
        logits = self._run(ids, self.past)
        if self.cache.stale:
            self._uncapture("the KV cache was recomputed")
            # The cached keys no longer fit this step (LongRoPE switched factors): like Transformers,
            # run the whole sequence so far again into a fresh cache.
            self.cache = KVCache(self.capacity)
            logits = self._run(self.tokens_so_far[:, :end], 0)
        self.past = end
        return logits

    def _rows(self, fn) -> None:
        """Apply a row operation to everything held per row besides the cache."""
        self.tokens_so_far = fn(self.tokens_so_far)
        if self.padding is not None:
            self.padding = fn(self.padding)

    def _per_source(self, fn) -> None:
        """Apply a row operation to what is held per input row (other inputs, paddings, static outputs)."""
        self.feeds = {k: fn(t) if t.dim() else t for k, t in self.feeds.items()}
        self.others = {k: None if p is None else fn(p) for k, p in self.others.items()}
        if self.static is not None:
            self.static.apply(fn)

    def reorder_cache(self, beam_idx):
        rows = self.tokens_so_far.shape[0]
        same = torch.arange(rows, device=beam_idx.device)
        if torch.equal(beam_idx, same):
            return
        self._uncapture("beams were reordered")
        past = self.past
        for k, v in self.cache.slots.values():
            k[:, :, :past] = k[:, :, :past].index_select(0, beam_idx)
            v[:, :, :past] = v[:, :, :past].index_select(0, beam_idx)
        self._rows(lambda t: t.index_select(0, beam_idx))
        # rows of one fork group share what is per source; only rows moving across groups carry it
        if not torch.equal(beam_idx // self.group, same // self.group):
            self._per_source(lambda t: t.index_select(0, beam_idx))
            self.group = 1

    def fork(self, n: int):
        self.check_room(self.tokens_so_far.shape[0] * n, self.max_length)
        self._uncapture("rows were forked")
        past = self.past
        for slot, (k, v) in list(self.cache.slots.items()):
            wide_k = k.new_empty((k.shape[0] * n, *k.shape[1:]))
            wide_v = v.new_empty((v.shape[0] * n, *v.shape[1:]))
            wide_k[:, :, :past] = k[:, :, :past].repeat_interleave(n, dim=0)
            wide_v[:, :, :past] = v[:, :, :past].repeat_interleave(n, dim=0)
            self.cache.slots[slot] = (wide_k, wide_v)
        self._rows(lambda t: t.repeat_interleave(n, dim=0))
        self._per_source(lambda t: t.repeat_interleave(n, dim=0))
        self.group *= n

    def _uncapture(self, why: str) -> None:
        """The buffers a recorded step points to are replaced (the cache, the rows): the rest of the
        generation runs eagerly (beam search replaces them at every step)."""
        if self.capture is not None and self.capture.refused is None:
            self.capture.refuse(why)

    def close(self):
        if self.static is not None:
            self.static.remove()
        if self.capture is not None:
            tape = self.capture.end()
            if tape is not None:
                padded = self.padding is not None
                self.model._decode_spare = step_capture.Spare(
                    self._spare_key(self.tokens_so_far.shape[0], padded), self.cache.slots, self.padding, tape)
        self.cache = self.static = None
        self.capture = None


def _observed(net) -> bool:
    """A module of `net` has forward hooks or an instance-level forward (a wrapper timing or
    collecting its calls)."""
    return any(m._forward_hooks or m._forward_pre_hooks or "forward" in vars(m) for m in net.modules())


def _as_mask(padding):
    """The loop's 0/1 mask from a sequence's padding (None: nothing padded)."""
    return None if padding is None else padding.long()
