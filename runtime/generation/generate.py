"""`generate`: Transformers' generate over any model that follows the Decoder protocol.

Settings come from the call's keyword arguments, then `generation_config`, then the model's own
(`defaults`: its generation_config.json or config.json), then Transformers' defaults. The mode follows
from them as in Transformers: greedy, sampling (do_sample), beam search (num_beams > 1) or beam
sampling. Returns the token ids [rows, length] (prompt + new tokens; an encoder-decoder: decoder start
+ new tokens), or, with return_dict_in_generate, a ModelOutput with `sequences` and the requested
`scores` / `logits` (and, for beams, `sequences_scores` and `beam_indices`).
"""
from __future__ import annotations

import torch

from runtime.errors import GenerationError
from runtime.generation.beam import beam_search
from runtime.generation.chain import logits_processors, stopping_criteria
from runtime.generation.config import GenerationConfig, resolve
from runtime.generation.plan import Plan, check_mode, length_limits, special_tokens, start_tokens
from runtime.generation.sampling import sample


def _ids(value, name: str, device) -> torch.Tensor:
    t = torch.as_tensor(value)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() not in (1, 2) or t.numel() == 0:
        raise GenerationError(f"generate(): {name} must be integer token ids shaped [batch, length] or [length], "
                              f"got {t.dtype} {list(t.shape)}")
    t = t.to(device=device, dtype=torch.long)
    return t[None] if t.dim() == 1 else t


def _source(value, device) -> torch.Tensor:
    """An encoder-decoder's source: the contract's first caller input, token ids or features (a float
    spectrogram); only its rows matter here, the model reads it as its contract says."""
    t = torch.as_tensor(value)
    if t.dim() == 0 or t.numel() == 0:
        raise GenerationError(f"generate(): the input must have a batch dim and values, got {t.dtype} {list(t.shape)}")
    return t.to(device=device)


def infer_mask(ids: torch.Tensor, pad: int | None, eos: torch.Tensor | None) -> torch.Tensor | None:
    """Transformers' guess when no mask is given: the pad token marks padding, if it occurs
    in the input and is not an end token; otherwise nothing is padding (None)."""
    if pad is None or not bool((ids == pad).any()):
        return None
    if eos is not None and bool((eos == pad).any()):
        return None
    return (ids != pad).long()


def _start_rows(model, settings: GenerationConfig, ids: torch.Tensor, target_prefix) -> torch.Tensor:
    """[B, L]: the tokens the loop extends — the prompt, or an encoder-decoder's decoder start (followed
    by the target prefix given, which gets the start token put before it unless every row begins with it)."""
    if not model.is_encoder_decoder:
        if target_prefix is not None:
            raise GenerationError("generate(): a target prefix is for encoder-decoders; this model only decodes")
        return ids
    rows = start_tokens(settings, ids.shape[0], ids.device)
    if target_prefix is None:
        return rows
    given = _ids(target_prefix, "the target prefix", ids.device)
    if given.shape[0] != ids.shape[0]:
        raise GenerationError(f"generate(): the target prefix has {given.shape[0]} rows, the input {ids.shape[0]}")
    return torch.cat([rows, given], dim=1) if bool((given[:, 0] != rows[:, 0]).all()) else given


def generate(model, prompt, mask=None, generation_config: GenerationConfig | None = None, *,
             defaults: GenerationConfig | None = None, max_positions: int | None = None, streamer=None,
             generator: torch.Generator | None = None, tokenizer=None, logits_processor=None,
             stopping_criteria_list=None, target_prefix=None, **kwargs):
    """Generate with `model` (a Decoder). `kwargs` are GenerationConfig fields (an unknown name is a
    GenerationError). `streamer`: an object with put(ids) / end() (Transformers' TextStreamer works).
    `generator`: the torch.Generator sampling draws from (default: torch's global one).
    `tokenizer`: needed for stop_strings. `logits_processor` / `stopping_criteria_list`: extra callables,
    run after the built-in processors (before the sampling warpers) / criteria. `prompt` [B, S] / `mask`:
    the tokens to continue and their padding (0), or an encoder-decoder's source; `target_prefix`: its
    decoder's first tokens (the start token is put before them unless every row has it)."""
    settings, default_max_length = resolve(defaults, generation_config, kwargs)
    check_mode(settings, streamer)
    device = model.device
    if generator is not None and not isinstance(generator, torch.Generator):
        raise GenerationError(f"generate(): generator must be a torch.Generator, got {type(generator).__name__}")
    if generator is not None and generator.device.type != torch.device(device).type:
        raise GenerationError(f"generate(): the generator is on {generator.device} but the model on {device}; "
                              f"make it with torch.Generator(device={str(device)!r})")
    ids = _source(prompt, device) if model.is_encoder_decoder else _ids(prompt, "the input", device)
    mask = None if mask is None else _ids(mask, "the mask", device)
    if mask is not None and mask.shape != ids.shape[:2]:
        raise GenerationError(f"generate(): the mask is {list(mask.shape)}, the input {list(ids.shape)}")
    eos, pad = special_tokens(settings, device)
    rows = _start_rows(model, settings, ids, target_prefix)
    if mask is None and not model.is_encoder_decoder:
        mask = infer_mask(ids, pad, eos)
    if mask is not None and bool(mask.all()):
        mask = None
    if settings.stop_strings is not None and tokenizer is None:
        raise GenerationError("generate(): stop_strings need a tokenizer (pass tokenizer=...)")
    expand = max(settings.num_beams, settings.num_return_sequences)
    max_length, min_length = length_limits(settings, default_max_length, rows.shape[1], max_positions)
    padding_lengths = None
    if mask is not None and not model.is_encoder_decoder:
        padding_lengths = (mask != 0).int().argmax(dim=1).repeat_interleave(expand)
    plan = Plan(settings, device, eos, pad, rows.shape[1], max_length, min_length, expand, padding_lengths)
    processors = logits_processors(plan, logits_processor or ())
    criteria = stopping_criteria(plan, tokenizer, stopping_criteria_list or ())
    start = rows
    rows = rows.repeat_interleave(expand, dim=0) if expand > 1 else rows
    if streamer is not None:
        streamer.put(rows.cpu())
    try:
        # the prompt runs once per input row; its cache is then copied to the row's beams / samples
        logits = model.prefill(ids, mask, max_length, target_prefix=start if model.is_encoder_decoder else None)
        if expand > 1:
            model.fork(expand)
            logits = logits.repeat_interleave(expand, dim=0)
        if plan.beams:
            out = beam_search(model, plan, rows, logits, processors, criteria, generator)
        else:
            out = sample(model, plan, rows, logits, processors, criteria, streamer, generator)
    finally:
        model.close()
    if not settings.return_dict_in_generate:
        return out["sequences"]
    from runtime.model import ModelOutput
    return ModelOutput(out)
