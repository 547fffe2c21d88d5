"""Logits processors that penalise, forbid or force tokens, with Transformers' semantics.

Each is a small callable `(ids [N, L], scores [N, V] float) -> scores [N, V]` over the scores of
the next token; `ids` is every token of each row so far (prompt included). They never modify
their input. The sampling warpers (temperature, top-k, ...) are in warpers.py, the ordered list in
chain.py.
"""
from __future__ import annotations

import math

import torch

from runtime.errors import GenerationError

NEG_INF = -math.inf


def _vocab_mask(scores: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Bool [V]: True at the given token ids (ids beyond the vocabulary are simply absent)."""
    return torch.isin(torch.arange(scores.shape[-1], device=scores.device), tokens.to(scores.device))


class RepetitionPenalty:
    """Tokens already in the row: a positive score is divided by `penalty`, a negative one multiplied
    (CTRL's rule). `ignore` [N] (optional): leading positions per row left out, the left padding."""

    def __init__(self, penalty: float, ignore: torch.Tensor | None = None):
        self.penalty, self.ignore = penalty, ignore

    def __call__(self, ids, scores):
        vocab = scores.shape[-1]
        if self.ignore is not None:
            cols = torch.arange(ids.shape[1], device=ids.device)
            ids = ids.masked_fill(cols[None, :] < self.ignore.to(ids.device)[:, None], vocab)
        # one spare column absorbs the ignored positions and any id the LM head cannot produce
        seen = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
        seen.scatter_(1, ids.clamp(max=vocab), True)
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen[:, :vocab], penalised, scores)


class NoRepeatNGram:
    """Forbid the tokens that would complete an n-gram already present in the row."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, ids, scores):
        length = ids.shape[1]
        if length < self.n:
            return scores
        vocab = scores.shape[-1]
        # every n-gram of the row; one whose first n-1 tokens equal the row's last n-1 bans its last token
        grams = ids.unfold(1, self.n, 1)                                    # [N, W, n]
        suffix = ids[:, length - self.n + 1:]                               # [N, n-1]
        hits = (grams[:, :, :-1] == suffix[:, None, :]).all(dim=-1)               # [N, W]
        banned_ids = torch.where(hits, grams[:, :, -1].clamp(max=vocab), vocab)
        banned = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
        banned.scatter_(1, banned_ids, True)
        return scores.masked_fill(banned[:, :vocab], NEG_INF)


class SequenceBias:
    """Add a bias to a token when the row ends with the sequence's other tokens (a one-token
    sequence: always). `bias`: {tuple of ids: float}. -inf forbids the sequence (bad words)."""

    def __init__(self, bias: dict[tuple[int, ...], float], option: str = "sequence_bias"):
        self.bias, self.option = bias, option
        self._tables = None

    def _prepare(self, scores):
        vocab = scores.shape[-1]
        too_big = sorted({t for seq in self.bias for t in seq if t >= vocab})
        if too_big:
            raise GenerationError(f"{self.option}: token ids {too_big} are outside the model's vocabulary of {vocab}")
        single = torch.zeros(vocab, dtype=torch.float, device=scores.device)
        for seq, b in self.bias.items():
            if len(seq) == 1:
                single[seq[0]] = b
        by_length: dict[int, list] = {}
        for seq, b in self.bias.items():
            if len(seq) > 1:
                by_length.setdefault(len(seq) - 1, []).append((seq, b))
        groups = [(torch.tensor([s[:-1] for s, _ in group], device=scores.device),
                   torch.tensor([s[-1] for s, _ in group], device=scores.device),
                   torch.tensor([b for _, b in group], dtype=torch.float, device=scores.device))
                  for group in by_length.values()]
        self._tables = (single, groups)

    def __call__(self, ids, scores):
        if self._tables is None:
            self._prepare(scores)
        single, groups = self._tables
        bias = torch.zeros_like(scores) + single
        for prefixes, last, values in groups:
            k = prefixes.shape[1]
            if k > ids.shape[1]:
                continue
            ends_with = (ids[:, None, -k:] == prefixes).all(dim=-1)              # [N, G]
            bias.index_add_(1, last, torch.where(ends_with, values, 0.0).to(bias.dtype))
        return scores + bias


def bad_words(bad_words_ids: list[list[int]], eos: list[int] | None) -> SequenceBias:
    """Forbid each sequence of `bad_words_ids` (an end token on its own is never forbidden)."""
    eos = eos or []
    kept = [w for w in bad_words_ids if not (len(w) == 1 and w[0] in eos)]
    return SequenceBias({tuple(w): NEG_INF for w in kept}, option="bad_words_ids")


class MinLength:
    """No end token while a row is shorter than `min_length` tokens (prompt included)."""

    def __init__(self, min_length: int, eos: torch.Tensor):
        self.min_length, self.eos = min_length, eos

    def __call__(self, ids, scores):
        if ids.shape[-1] < self.min_length:
            return scores.masked_fill(_vocab_mask(scores, self.eos), NEG_INF)
        return scores.clone()


class MinNewTokens:
    """No end token before `min_new_tokens` tokens follow the `prompt_length` prompt tokens."""

    def __init__(self, prompt_length: int, min_new_tokens: int, eos: torch.Tensor):
        self.prompt_length, self.min_new_tokens, self.eos = prompt_length, min_new_tokens, eos

    def __call__(self, ids, scores):
        if ids.shape[-1] - self.prompt_length < self.min_new_tokens:
            return scores.masked_fill(_vocab_mask(scores, self.eos), NEG_INF)
        return scores.clone()


def _only(scores, tokens) -> torch.Tensor:
    forced = torch.full_like(scores, NEG_INF)
    forced[:, tokens] = 0
    return forced


class ForcedBOS:
    """The first generated token of a one-token start (an encoder-decoder's decoder) is `token`."""

    def __init__(self, token: int):
        self.token = token

    def __call__(self, ids, scores):
        return _only(scores, self.token) if ids.shape[-1] == 1 else scores


class ForcedEOS:
    """The token that reaches `max_length` is an end token (the first of `eos`, by score ties)."""

    def __init__(self, max_length: int, eos: torch.Tensor):
        self.max_length, self.eos = max_length, eos

    def __call__(self, ids, scores):
        return _only(scores, self.eos.to(scores.device)) if ids.shape[-1] == self.max_length - 1 else scores


class SuppressTokens:
    """Never these tokens."""

    def __init__(self, tokens: list[int], device=None):
        self.tokens = torch.tensor(list(tokens), dtype=torch.long, device=device)

    def __call__(self, ids, scores):
        return scores.masked_fill(_vocab_mask(scores, self.tokens), NEG_INF)


class SuppressTokensAtBegin:
    """Not these tokens as the first generated one (when rows are `begin_index` tokens long)."""

    def __init__(self, tokens: list[int], begin_index: int, device=None):
        self.tokens = torch.tensor(list(tokens), dtype=torch.long, device=device)
        self.begin_index = begin_index

    def __call__(self, ids, scores):
        if ids.shape[-1] == self.begin_index:
            return scores.masked_fill(_vocab_mask(scores, self.tokens), NEG_INF)
        return scores


def remove_invalid_values(ids, scores):
    """NaN -> 0 and ±inf -> the dtype's largest / smallest finite value, so sampling cannot fail."""
    info = torch.finfo(scores.dtype)
    out = torch.where(scores != scores, 0.0, scores)
    out = torch.where(scores == math.inf, info.max, out)
    return torch.where(scores == NEG_INF, info.min, out)


def renormalize(ids, scores):
    """Log-softmax after every other processor: the scores are log-probabilities again."""
    return scores.log_softmax(dim=-1)
