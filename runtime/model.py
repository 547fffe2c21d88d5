"""The loaded model: the emitted network driven by its artifact's runtime contract (interface.json).

`model(first_input, other_input=..., some_mask=...)` takes the contract's caller inputs by name (the
first also positionally) and one padding mask per sequence, supplies what the contract says the
runtime supplies (positions, key positions, fills), and returns the outputs by name. `generate` is
Transformers' (runtime/generation), on the sequence the contract generates, from a prompt or from a
start token (encoder-decoder). Nothing here knows an input, output or family name: the contract says
them all.
"""
from __future__ import annotations

import inspect
import types
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree

from runtime.call_inputs import as_tensor, check_input, check_mask, table_bounds
from runtime.context import ForwardContext, SequenceState, tracing
from runtime.errors import InputError
from runtime.interface import Input, Interface
from runtime.model_api import TransformersAPI
from runtime.ops import last_positions


class ModelOutput(dict):
    """Outputs by name, readable as attributes (`out.NAME`) and, like Transformers' ModelOutput, by
    position (`out[0]`: the first output that is set; the loss first when there is one)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(v for v in self.values() if v is not None)


# A pytree node (its values are the leaves, its keys the context), so torch.export, torch.compile
# and tree utilities see through it as they see through a dict.
pytree.register_pytree_node(
    ModelOutput, lambda out: (list(out.values()), list(out.keys())),
    lambda values, keys: ModelOutput(zip(keys, values)),
    flatten_with_keys_fn=lambda out: ([(pytree.MappingKey(k), v) for k, v in out.items()], list(out.keys())),
    serialized_type_name="graphspec.ModelOutput")


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the real tokens of its row, so padding never shifts positions."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def supplied_positions(state: SequenceState, batch: int, length: int, device, keys: bool = False) -> torch.Tensor:
    """[B, length]: the positions of the `length` new tokens of a sequence among its real tokens, after
    the `past` ones already cached; with `keys`, [B, state.key_span(length)]: those of every key so
    far (at a decode step laid over the whole KV cache, 0 past the keys so far, which are never read:
    ALiBi's bias reaches the attention, which reads the keys so far)."""
    total = state.past + length
    first = 0 if keys else state.past
    if state.padding is None:
        out = torch.arange(first, total, device=device).expand(batch, -1)
    else:
        out = positions_from_mask(state.padding[:, :total])[:, first:]
    span = state.key_span(length) if keys else total
    return F.pad(out, (0, span - total)) if span > total else out


def modules_at(net: nn.Module, path) -> list[nn.Module]:
    """The modules a contract path names; `*` steps into every layer of a repeated block."""
    found = [net]
    for part in path:
        found = [child for m in found for child in (list(m) if part == "*" else [getattr(m, part)])]
    return found


def _count(logits_to_keep) -> int:
    if not isinstance(logits_to_keep, int) or isinstance(logits_to_keep, bool) or logits_to_keep < 0:
        raise InputError(f"logits_to_keep must be an integer >= 0, got {logits_to_keep!r}")
    return logits_to_keep


def _forward(self, *args, **kwargs):
    return CompiledModel.forward(self, *args, **kwargs)


def _with_signature(model) -> types.MethodType:
    """forward bound to the model, with the signature its contract gives it (the first input also
    positional; the other inputs, masks, inputs_embeds and loss targets by keyword): what help() shows
    and what torch.export binds example inputs and dynamic shapes to (it cannot see through **kwargs)."""
    P = inspect.Parameter
    callers = [i.name for i in model.contract.callers]
    named = [*(i.name for i in model.contract.inputs if i.name not in callers[:1]), *model.contract.masks,
             *(model.interface.embeddings or {})]
    if model.loss_spec is not None:
        from runtime.loss_kinds import LOSS_KINDS
        named += LOSS_KINDS[model.loss_spec.kind].labels
    params = [P("self", P.POSITIONAL_ONLY)] + [P(n, P.POSITIONAL_OR_KEYWORD, default=None) for n in callers[:1]]
    params += [P(n, P.KEYWORD_ONLY, default=None) for n in dict.fromkeys(named)]
    params += [P(n, P.KEYWORD_ONLY, default=d) for n, d in (("logits_to_keep", 0), ("output_hidden_states", False),
                                                            ("output_attentions", False), ("return_dict", True))]
    fn = types.FunctionType(_forward.__code__, _forward.__globals__, "forward")
    fn.__signature__ = inspect.Signature(params)
    fn.__doc__ = CompiledModel.forward.__doc__
    return types.MethodType(fn, model)


def _grad_or_inference():
    """Autograd when grad mode is on (training, or gradients wanted); inference_mode otherwise, where
    the forward keeps no graph and the fused groups may take their kernels. Tracing (torch.compile,
    torch.export) keeps the caller's mode."""
    if torch.is_grad_enabled() or tracing():
        return nullcontext()
    return torch.inference_mode()


class CompiledModel(TransformersAPI, nn.Module):
    def __init__(self, net: nn.Module, config: dict, interface: Interface, manifest: dict, dtype: torch.dtype,
                 device, load_report: dict | None = None, head: str | None = None, source=None):
        super().__init__()
        self.net = net
        self.config = config           # runtime.hf_config.ModelConfig: spec values + config.json keys
        self.interface = interface
        self.spec = interface          # what the runtime knows of the spec: its name, config, heads, contract
        self.contract = interface.contract
        self.manifest = manifest
        self._dtype, self._device = dtype, torch.device(device)
        self.load_report = load_report or {}
        self.head = head
        self.source = source           # the checkpoint folder it was loaded from (tokenizer, generation config)
        self.output_names = interface.heads[head].outputs if head is not None else self.contract.outputs
        self.loss_spec = interface.heads[head].loss if head is not None else interface.loss
        self.id2label: dict[int, str] | None = None
        self.group = None          # tensor parallelism: the process group of its collectives (runtime/parallel)
        self.shard = None          # and what this rank holds of each tensor (runtime.parallel.Shard)
        # the last generation's decode-step recording (runtime/step_capture.py): how many steps it replayed,
        # or why it did not
        self.step_capture = None
        self._trunk = None             # base_model of a head model: the trunk's forward on the same modules
        self.forward = _with_signature(self)
        self._inputs = {i.name: i for i in self.contract.inputs}
        self.config_changed()
        self.generation_config = None    # runtime.generation.GenerationConfig: set by the loader
        self.tokenizer = None            # runtime.generation.Tokenizer of the checkpoint folder, if it has one

    def config_changed(self) -> None:
        """What the runtime derives from config values, derived again (after resize_token_embeddings)."""
        config = self.config
        # per int input, the smallest table its values index (vocab_size rows): ids are checked once per call
        self.input_bounds = table_bounds(self.contract.inputs, config)
        # per input, the dims this config fixes (an image of image_size pixels)
        self._fixed = {i.name: {k: int(d.evaluate(config)) for k, d in enumerate(i.shape) if d.names <= config.keys()}
                       for i in self.contract.inputs}

    def __getstate__(self):
        # copy.deepcopy and torch.save: the last generation's recorded step and the buffers it left
        # for the next (runtime/step_capture.py) hold kernel programs and pointers; a copy records its own
        state = super().__getstate__()
        state["step_capture"] = None
        state.pop("_decode_spare", None)
        return state

    def __repr__(self) -> str:
        return f"CompiledModel({self.interface.name}, dtype={self.dtype}, device={self.device})\n{self.net!r}"

    def text_keys(self) -> tuple[str, str | None]:
        """What a tokenizer's output must be named to feed this model: the input text goes to (the
        tokens generation extends, or an encoder-decoder's source, or the first caller int input along
        a sequence) and the keyword of that sequence's padding mask (None: it has none)."""
        g = self.contract.generate
        callers = [i for i in self.contract.callers if i.dtype == "int" and i.seq is not None]
        if g is not None and g.start is None:
            text = self._inputs[g.tokens]
        elif callers:
            text = callers[0]
        else:
            return ("ids", None)
        mask = next((k for k, seq in self.contract.masks.items() if seq == text.seq), None)
        return text.name, mask

    # The compute dtype (float inputs are cast to it) and device follow the params through .to(),
    # .half(), .cuda(): nn.Module moves them with _apply, which refreshes both here.
    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        floating = next((p for p in self.net.parameters() if p.is_floating_point()), None)
        if floating is not None:
            self._dtype, self._device = floating.dtype, floating.device
        return out

    def kernel_report(self) -> dict[str, str]:
        """Which path each fused group takes here: triton, triton (interpreter) or torch, and why."""
        from runtime.kernels import kernel_report
        return kernel_report(self)

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, *args, logits_to_keep: int = 0, output_hidden_states: bool = False,
                output_attentions: bool = False, return_dict: bool = True, **kwargs):
        """The contract's caller inputs by name (the first also positionally), the padding mask of each
        sequence by its keyword (1 = a real position), and, optionally, inputs the runtime would supply.

        `logits_to_keep=k` (as in Transformers): the next-token logits of the last k positions only, 0
        for all. The compiler cut the model's per-position tail (manifest "keep_positions"), so the
        final norm and the head then run on those positions alone.

        Targets under Transformers' names (`labels`, `start_positions`, ...) add `loss`, computed as
        the spec's `loss:` kind says (runtime/losses.py). `inputs_embeds` (and the like for other
        token inputs, interface "embeddings") stand in for an embedding's output.
        `output_hidden_states` / `output_attentions` add each layer's carried value and attention
        probabilities; `return_dict=False` returns a tuple (loss first).

        With grad mode on (training) the forward records autograd; otherwise it runs in
        inference_mode.
        """
        keep = _count(logits_to_keep)
        targets = self._targets(kwargs)
        embeds = self._take_embeds(args, kwargs)
        record = tuple(k for k, on in (("hidden_states", output_hidden_states), ("attentions", output_attentions)) if on)
        with _grad_or_inference():
            feeds, masks = self._bind(args, kwargs)
            lengths = self._lengths(feeds)
            states = {seq: SequenceState(padding) for seq, padding in self._paddings(masks, feeds, lengths).items()}
            out = self._run(feeds, states, keep, record=record, embeds=embeds)
            if keep:
                g = self.contract.generate
                if g is None or g.logits not in out:
                    why = self.contract.no_generate if g is None else f"the loaded head outputs {', '.join(out)}"
                    raise InputError(f"logits_to_keep needs next-token logits, which {self.interface.name} has not: {why}")
                out[g.logits] = last_positions(out[g.logits], keep)
            if targets is not None:
                out = ModelOutput({"loss": self._loss(out, targets), **out})
        return out if return_dict else out.to_tuple()

    def _targets(self, kwargs: dict) -> list | None:
        """The loss targets of this call (popped from kwargs), or None when none are given; for a
        seq2seq loss without decoder inputs, those inputs are made from the labels (teacher forcing)."""
        loss = self.loss_spec
        from runtime.loss_kinds import LOSS_KINDS
        names = LOSS_KINDS[loss.kind].labels if loss is not None else ()
        given = {n: kwargs.pop(n) for n in names if n in kwargs}
        for n in [n for k in LOSS_KINDS.values() for n in k.labels if n not in self._inputs]:
            if kwargs.get(n, 0) is None:
                del kwargs[n]         # labels=None: no targets, as in Transformers
        stray = [n for k in LOSS_KINDS.values() for n in k.labels
                 if kwargs.get(n) is not None and n not in self._inputs]
        if stray:
            raise TypeError(f"{self.interface.name}{f' with the {self.head!r} head' if self.head else ''} computes "
                            + (f"its loss from {', '.join(names)}" if loss else "no loss (its spec declares none)")
                            + f"; got {', '.join(dict.fromkeys(stray))}")
        if not given or all(v is None for v in given.values()):
            return None
        missing = [n for n in names if given.get(n) is None]
        if missing:
            raise TypeError(f"{self.interface.name}: the {loss.kind} loss needs {', '.join(names)}; missing {', '.join(missing)}")
        targets = [as_tensor(self.interface.name, n, given[n], self.device) for n in names]
        g = self.contract.generate
        if loss.kind == "seq2seq" and g is not None and g.start is not None and kwargs.get(g.tokens) is None:
            from runtime.losses import shift_right
            pad = self._options().get("pad")
            kwargs[g.tokens] = shift_right(targets[0], int(g.start.evaluate(self.config)), 0 if pad is None else int(pad))
        return targets

    def _options(self) -> dict:
        return {k: e.evaluate(self.config) for k, e in self.loss_spec.options.items()}

    def _loss(self, out: ModelOutput, targets: list) -> torch.Tensor:
        from runtime.losses import compute_loss
        return compute_loss(self.loss_spec, out, targets, self._options())

    def _bind(self, args, kwargs, generated: str | None = None) -> tuple[dict, dict]:
        """(input name -> tensor, mask keyword -> mask) from a call; `generated`: an input the caller
        does not pass (generate makes it)."""
        name, callers = self.interface.name, self.contract.callers
        if len(args) > 1 or (args and not callers):
            first = f"its first input ({callers[0].name})" if callers else "no input"
            raise InputError(f"{name} takes {first} positionally and the others by name: "
                             f"{', '.join(self._inputs)}")
        if args:
            if callers[0].name in kwargs:
                raise InputError(f"{name} got {callers[0].name} both positionally and by name")
            kwargs = {callers[0].name: args[0], **kwargs}
        feeds, masks = {}, {}
        for key, value in kwargs.items():
            if key in self._inputs:
                if value is not None:
                    feeds[key] = self._tensor(self._inputs[key], value)
            elif key in self.contract.masks:
                if value is not None:
                    masks[key] = value
            else:
                known = ", ".join(self._inputs) + (f"; masks: {', '.join(self.contract.masks)}" if self.contract.masks else "")
                raise InputError(f"{name} takes no {key} (its inputs: {known})")
        missing = [i.name for i in callers if i.name not in feeds and i.name != generated]
        if missing:
            raise InputError(f"{name} needs the input(s) {', '.join(missing)}")
        return feeds, masks

    def _tensor(self, inp: Input, value) -> torch.Tensor:
        t = as_tensor(self.interface.name, f"input {inp.name}", value, self.device)
        # ids are range-checked in eager calls only: a check on values would become a guard on data
        check_input(self.interface.name, inp, t, None if tracing() else self.input_bounds.get(inp.name))
        if inp.dtype == "float":
            t = t.to(self.dtype)
        elif inp.dtype == "int":
            t = t.long()      # the IR's int is int64, what gathers and index arithmetic take (a no-op for it)
        if t.dim() == len(inp.shape) - 1 and self._batched(inp):
            t = t[None]      # one example without its batch dim
        if t.dim() != len(inp.shape):
            raise InputError(f"{self.interface.name}: input {inp.name} must be [{', '.join(map(str, inp.shape))}], "
                             f"got {list(t.shape)}")
        return t

    def _batched(self, inp: Input) -> bool:
        first = inp.shape[0] if inp.shape else None
        return first is not None and first.kind == "name" and first.value not in self.config

    def _lengths(self, feeds: dict) -> dict[str, int]:
        """Each sequence's length in this call, from the inputs along it (which must agree)."""
        lengths, source = {}, {}
        for i in self.contract.inputs:
            t = feeds.get(i.name)
            if i.seq is None or t is None or i.source == "key_positions" or t.dim() < 2:
                continue
            n = t.shape[1]
            if lengths.setdefault(i.seq, n) != n:
                raise InputError(f"{self.interface.name}: {source[i.seq]} and {i.name} run along sequence {i.seq} "
                                 f"but have lengths {lengths[i.seq]} and {n}")
            source.setdefault(i.seq, i.name)
        return lengths

    def _batch(self, feeds: dict, seq: str | None = None) -> int:
        """The batch size of the inputs along `seq` (None: of any batched input): a model may take
        batches of different sizes along different sequences (texts and images)."""
        return next(t.shape[0] for n, t in feeds.items()
                    if self._batched(self._inputs[n]) and t.dim() and (seq is None or self._inputs[n].seq == seq))

    def _paddings(self, masks: dict, feeds: dict, lengths: dict) -> dict[str, torch.Tensor | None]:
        """Sequence -> its padding (bool, True = real) from the masks given; None when nothing is padded."""
        out = {}
        for kwarg, mask in masks.items():
            seq = self.contract.masks[kwarg]
            if seq not in lengths:
                raise InputError(f"{self.interface.name}: {kwarg} masks sequence {seq}, and no input along it is given")
            m = as_tensor(self.interface.name, kwarg, mask, self.device)
            m = check_mask(self.interface.name, kwarg, m, (self._batch(feeds, seq), lengths[seq]), seq,
                           values=not tracing())
            out[seq] = None if not tracing() and bool(m.all()) else m
        return out

    def _run(self, feeds: dict, states: dict[str, SequenceState], keep: int, record: tuple = (),
             embeds: dict | None = None, step=None) -> ModelOutput:
        """One forward. `step(net, inputs, ctx)`, when given, runs the network instead of calling it
        (a generation's decode steps: runtime/step_capture.py)."""
        feeds = dict(feeds)
        lengths = self._lengths(feeds)
        for seq in lengths:
            states.setdefault(seq, SequenceState())
        self._supply(feeds, states, lengths)
        self._check_dims(feeds)
        # `model.train()` reaches the network (dropout then drops)
        ctx = ForwardContext(self.dtype, self.device, states, keep_positions=keep, training=self.training,
                             group=self.group, record=record)
        net, inputs = self._trunk or self.net, [feeds[i.name] for i in self.contract.inputs]
        with self._embeds_in_place(feeds, embeds):
            out = ModelOutput(net(*inputs, ctx) if step is None else step(net, inputs, ctx))
        out.update(ctx.records())
        return out

    def _supply(self, feeds: dict, states: dict[str, SequenceState], lengths: dict[str, int]) -> None:
        """The inputs the caller left to the runtime: positions, key positions, fills."""
        for i in self.contract.inputs:
            if i.name in feeds:
                continue
            batch = self._batch(feeds, i.seq)
            n, state = lengths[i.seq], states[i.seq]
            if i.source in ("positions", "key_positions"):
                feeds[i.name] = supplied_positions(state, batch, n, self.device, keys=i.source == "key_positions")
            else:
                dtype = {"int": torch.long, "bool": torch.bool}.get(i.dtype, self.dtype)
                rest = [int(d.evaluate(self.config)) for d in i.shape[2:]]
                feeds[i.name] = torch.full((batch, n, *rest), i.value, dtype=dtype, device=self.device)

    def _check_dims(self, feeds: dict) -> None:
        for name, t in feeds.items():
            inp, fixed = self._inputs[name], self._fixed[name]
            shape = tuple(t.shape)
            if len(shape) != len(inp.shape) or any(shape[i] != size for i, size in fixed.items()):
                want = [str(fixed.get(i, d)) for i, d in enumerate(inp.shape)]
                raise InputError(f"{self.interface.name}: input {name} must be [{', '.join(want)}] for this config, "
                                 f"got {list(shape)}")

    # -- generate -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, *args, generation_config=None, **kwargs):
        """Transformers' generate (runtime/generation): greedy, sampling, beam search, with the
        checkpoint's generation_config.json defaults. The model inputs are those of a forward call (the
        first also positionally) with their masks; every other keyword is a generation argument.
        Returns prompt + new tokens (an encoder-decoder: start token + new tokens)."""
        from runtime.generation import generate
        from runtime.generation.adapter import CompiledDecoder
        inputs = {k: kwargs.pop(k) for k in list(kwargs) if k in self._inputs or k in self.contract.masks}
        decoder = CompiledDecoder(self, args, inputs)
        defaults = self.generation_config
        kwargs.setdefault("tokenizer", self.tokenizer)
        return generate(decoder, decoder.tokens, decoder.mask, generation_config, defaults=defaults,
                        target_prefix=decoder.target_prefix,
                        max_positions=None if defaults is None else defaults.max_position_embeddings, **kwargs)
