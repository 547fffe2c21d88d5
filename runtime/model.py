"""The loaded model: the emitted network plus what a Transformers user expects around it —
`model(input_ids, attention_mask)` returning `.logits`, and `generate` (runtime/generation)."""
from __future__ import annotations

import torch
from torch import nn

from compiler.ops.indexing import last_positions
from runtime.context import ForwardContext

# Model inputs the runtime knows how to supply; a spec's model.inputs must be among them.
SUPPLIED_INPUTS = ("input_ids", "position_ids", "token_type_ids", "pixel_values", "decoder_input_ids")


def _keep_logits(out: "ModelOutput", keep: int) -> "ModelOutput":
    # a model without a cut tail (or a head) computed every position: the slice is then done here
    logits = out.get("logits")
    if logits is not None and logits.dim() >= 3:
        out["logits"] = last_positions(logits, keep)
    return out


class ModelOutput(dict):
    """Outputs by name, readable as attributes (`out.logits`) like Transformers' ModelOutput."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the real tokens of its row, so padding never shifts RoPE."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def bidirectional(spec) -> bool:
    """Whether some attention of the spec sees later tokens (an encoder): such a model cannot generate."""
    for decl in [spec.model, *spec.blocks.values()]:
        for line in decl.graph:
            causal = line.fields.get("causal") if line.op == "attention" else None
            if causal is not None and causal.is_constant() and not causal.evaluate({}):
                return True
    return False


def static_modules(spec, decl, owner: nn.Module):
    """The module instances of the block params declared `static` (each layer's, when repeated)."""
    for p in decl.params.values():
        if p.kind != "block":
            continue
        module = getattr(owner, p.name)
        instances = list(module) if p.repeat is not None else [module]
        for m in instances:
            if p.static:
                yield m
            else:
                yield from static_modules(spec, spec.blocks[p.block], m)


def _fixed_dims(spec, config: dict) -> dict[str, tuple[int, dict[int, int]]]:
    """Per model input: its rank and the dims the config fixes (an image of image_size pixels)."""
    out = {}
    for name, decl in spec.model.inputs.items():
        fixed = {i: int(d.evaluate(config)) for i, d in enumerate(decl.shape) if d.names <= config.keys()}
        out[name] = (len(decl.shape), fixed)
    return out


class CompiledModel(nn.Module):
    def __init__(self, net: nn.Module, config: dict, spec, manifest: dict, dtype: torch.dtype, device,
                 load_report: dict | None = None):
        super().__init__()
        self.net = net
        self.config = config
        self.spec = spec
        self.manifest = manifest
        self.dtype = dtype
        self.device = torch.device(device)
        self.load_report = load_report or {}
        self.input_names = list(spec.model.inputs)
        self.id2label: dict[int, str] | None = None
        self._input_dims = _fixed_dims(spec, config)
        self.generation_config = None    # runtime.generation.GenerationConfig: set by the loader
        self.tokenizer = None            # runtime.generation.Tokenizer of the checkpoint folder, if it has one

    def __repr__(self) -> str:
        return f"CompiledModel({self.spec.name}, dtype={self.dtype}, device={self.device})\n{self.net!r}"

    def kernel_report(self) -> dict[str, str]:
        """Which path each fused group takes here: triton, triton (interpreter) or torch, and why."""
        from compiler.triton.dispatch import kernel_report
        return kernel_report(self)

    def _run(self, input_ids, position_ids, ctx, **extra) -> ModelOutput:
        feeds = {"input_ids": input_ids, "position_ids": position_ids, **extra}
        if "token_type_ids" in self.input_names and feeds.get("token_type_ids") is None:
            # one segment, as Transformers assumes when none is given
            feeds["token_type_ids"] = torch.zeros_like(input_ids)
        missing = [n for n in self.input_names if feeds.get(n) is None]
        if missing:
            raise TypeError(f"{self.spec.name} needs the input(s) {', '.join(missing)}")
        for name, (rank, fixed) in self._input_dims.items():
            shape = tuple(feeds[name].shape)
            if len(shape) != rank or any(shape[i] != size for i, size in fixed.items()):
                want = [str(fixed.get(i, d)) for i, d in enumerate(self.spec.model.inputs[name].shape)]
                raise ValueError(f"{self.spec.name}: input {name} must be [{', '.join(want)}] for this config, "
                                 f"got {list(shape)}")
        return ModelOutput(self.net(*(feeds[n] for n in self.input_names), ctx))

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, logits_to_keep: int = 0) -> ModelOutput:
        """`logits_to_keep=k` (as in Transformers): logits of the last k positions only, 0 for all.
        The compiler cut the model's per-position tail (manifest "keep_positions"), so the final norm
        and the LM head then run on those positions alone."""
        if not isinstance(logits_to_keep, int) or isinstance(logits_to_keep, bool) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an integer >= 0, got {logits_to_keep!r}")
        return _keep_logits(self._forward(input_ids, attention_mask, position_ids, token_type_ids, pixel_values,
                                          decoder_input_ids, logits_to_keep), logits_to_keep)

    def _forward(self, input_ids, attention_mask, position_ids, token_type_ids, pixel_values, decoder_input_ids,
                 keep) -> ModelOutput:
        if "decoder_input_ids" in self.input_names or decoder_input_ids is not None:
            return self._encoder_decoder(input_ids, attention_mask, decoder_input_ids, keep)
        extra = {}
        if position_ids is not None and "position_ids" not in self.input_names:
            raise TypeError(f"{self.spec.name} computes its own positions; it takes no position_ids")
        if token_type_ids is not None:
            extra["token_type_ids"] = self._batch(token_type_ids)
        if pixel_values is not None:
            pv = torch.as_tensor(pixel_values, device=self.device).to(self.dtype)
            extra["pixel_values"] = pv[None] if pv.dim() == 3 else pv
        unused = [n for n in extra if n not in self.input_names]
        if unused:
            raise TypeError(f"{self.spec.name} takes no {', '.join(unused)} (its inputs: {', '.join(self.input_names)})")
        if input_ids is None:
            if "input_ids" in self.input_names:
                raise TypeError(f"{self.spec.name} needs input_ids")
            return self._run(None, None, ForwardContext(self.dtype, self.device, keep_positions=keep), **extra)
        input_ids = self._batch(input_ids)
        padding = None
        if attention_mask is not None:
            attention_mask = self._batch(attention_mask).to(self.device)
            if not bool(attention_mask.all()):
                padding = attention_mask.bool()
        if position_ids is None:
            position_ids = (positions_from_mask(padding) if padding is not None
                            else torch.arange(input_ids.shape[1], device=self.device).expand_as(input_ids))
        ctx = ForwardContext(self.dtype, self.device, padding=padding, keep_positions=keep)
        return self._run(input_ids, position_ids.to(self.device), ctx, **extra)

    def _source_padding(self, attention_mask):
        if attention_mask is None:
            return None
        mask = self._batch(attention_mask).to(self.device)
        return None if bool(mask.all()) else mask.bool()

    def _encoder_decoder(self, input_ids, attention_mask, decoder_input_ids, keep: int = 0) -> ModelOutput:
        if "decoder_input_ids" not in self.input_names:
            raise TypeError(f"{self.spec.name} is not an encoder-decoder; it takes no decoder_input_ids")
        if input_ids is None or decoder_input_ids is None:
            raise TypeError(f"{self.spec.name} needs input_ids (the source) and decoder_input_ids")
        ctx = ForwardContext(self.dtype, self.device, encoder_padding=self._source_padding(attention_mask),
                             keep_positions=keep)
        return self._run(self._batch(input_ids), None, ctx, decoder_input_ids=self._batch(decoder_input_ids))

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 generation_config=None, **kwargs):
        """Transformers' generate (runtime/generation): greedy, sampling, beam search, with the
        checkpoint's generation_config.json defaults; returns prompt + new tokens (an encoder-decoder:
        decoder start + new tokens, with `input_ids` the source)."""
        from runtime.generation import generate
        from runtime.generation.adapter import CompiledDecoder
        defaults = self.generation_config
        kwargs.setdefault("tokenizer", self.tokenizer)
        return generate(CompiledDecoder(self), input_ids, attention_mask, generation_config, defaults=defaults,
                        target_prefix=kwargs.pop("decoder_input_ids", None),
                        max_positions=None if defaults is None else defaults.max_position_embeddings, **kwargs)

    def _batch(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.device)
        return t[None] if t.dim() == 1 else t
