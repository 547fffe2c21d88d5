"""What one generate call derives from its settings before decoding, as Transformers derives it:
the end, pad and decoder-start tokens, the length limits, the decoding mode and its checks."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from runtime.errors import GenerationError
from runtime.generation.config import GenerationConfig


@dataclass
class Plan:
    settings: GenerationConfig
    device: torch.device
    eos: torch.Tensor | None          # [E] long: the end tokens, or None
    pad: int | None                   # what finished rows continue with
    prompt_length: int                # tokens each row of the loop starts with (a decoder's start: 1)
    max_length: int                   # tokens a row may reach, prompt included
    min_length: int                   # no end token below this length
    expand: int                       # rows per input row: beams or returned sequences
    padding_lengths: torch.Tensor | None = None   # [N] left padding per (expanded) row, for the repetition penalty

    def as_ids(self, ids) -> torch.Tensor:
        return torch.tensor([ids] if isinstance(ids, int) else list(ids), dtype=torch.long, device=self.device)

    @property
    def beams(self) -> bool:
        return self.settings.num_beams > 1


def special_tokens(settings: GenerationConfig, device) -> tuple[torch.Tensor | None, int | None]:
    """(end tokens, pad token): the pad token defaults to the first end token."""
    eos = settings.eos_token_id
    eos = None if eos is None else torch.tensor([eos] if isinstance(eos, int) else eos, dtype=torch.long,
                                                device=device)
    pad = settings.pad_token_id
    if pad is None and eos is not None:
        pad = int(eos[0])
    return eos, pad


def start_tokens(settings: GenerationConfig, batch: int, device) -> torch.Tensor:
    """[B, 1]: an encoder-decoder's first decoder token: the start token (else bos_token_id)."""
    start = settings.decoder_start_token_id
    if start is None:
        start = settings.bos_token_id
    if start is None:
        raise GenerationError("generate(): an encoder-decoder needs decoder_start_token_id (or bos_token_id); "
                              "neither the call, generation_config.json nor config.json sets it")
    if isinstance(start, list):
        if len(start) != batch:
            raise GenerationError(f"generate(): decoder_start_token_id has {len(start)} ids for {batch} rows")
        return torch.tensor(start, dtype=torch.long, device=device)[:, None]
    return torch.full((batch, 1), start, dtype=torch.long, device=device)


def length_limits(settings: GenerationConfig, default_max_length: bool, prompt_length: int,
                  max_positions: int | None) -> tuple[int, int]:
    """(max_length, min_length) in tokens of the loop's rows: max_new_tokens and min_new_tokens count
    from the prompt; Transformers' default max_length (20) does too, capped by the model's positions."""
    if settings.max_new_tokens is not None:
        max_length = settings.max_new_tokens + prompt_length
    elif default_max_length:
        max_length = settings.max_length + prompt_length
        if max_positions is not None:
            max_length = min(max_length, max_positions)
    else:
        max_length = settings.max_length
    min_length = settings.min_length
    if settings.min_new_tokens is not None:
        min_length = settings.min_new_tokens + prompt_length
    if prompt_length >= max_length:
        raise GenerationError(f"generate(): the input is {prompt_length} tokens long but max_length is {max_length}; "
                              "raise max_length or set max_new_tokens")
    if min_length > max_length:
        warnings.warn(f"generate(): min length {min_length} exceeds max length {max_length}; generation stops at "
                      "the max length", stacklevel=3)
    return max_length, min_length


def check_mode(settings: GenerationConfig, streamer) -> None:
    """The combinations Transformers refuses."""
    s = settings
    if s.num_return_sequences > 1:
        if s.num_beams == 1 and not s.do_sample:
            raise GenerationError(f"generate(): greedy decoding returns one sequence per input; num_return_sequences="
                                  f"{s.num_return_sequences} needs do_sample=True or num_beams > 1")
        if s.num_beams > 1 and s.num_return_sequences > s.num_beams:
            raise GenerationError(f"generate(): num_return_sequences ({s.num_return_sequences}) must be at most "
                                  f"num_beams ({s.num_beams})")
    if streamer is not None and s.num_beams > 1:
        raise GenerationError("generate(): a streamer cannot follow beam search (its beams change until the end); "
                              "use num_beams=1")
    if s.suppress_tokens:
        for name in ("forced_bos_token_id", "forced_eos_token_id"):
            forced = getattr(s, name)
            if forced is not None:
                forced = {forced} if isinstance(forced, int) else set(forced)
                if forced <= set(s.suppress_tokens):
                    raise GenerationError(f"generate(): every token of {name} ({sorted(forced)}) is also in "
                                          "suppress_tokens; nothing could be generated where it is forced")
