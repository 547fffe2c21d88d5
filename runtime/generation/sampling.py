"""Greedy decoding and multinomial sampling: one loop, as in Transformers, that differs only in how
the next token is picked from the processed scores (argmax, or a draw from their softmax)."""
from __future__ import annotations

import torch

from runtime.errors import GenerationError
from runtime.generation.chain import apply
from runtime.generation.plan import Plan
from runtime.generation.stopping import any_done
from runtime.ops import native_rows


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """[N]: one token per row drawn from `probs` [N, V] by inverting its cumulative sum (in float64)
    at one uniform number per row. The distribution torch.multinomial draws from (Transformers' way),
    at a fraction of its cost: it draws an exponential variate for every vocabulary entry. So the
    tokens differ from Transformers' for the same seed; their law does not."""
    cum = probs.cumsum(dim=-1, dtype=torch.float64)
    total = cum[:, -1:]
    if not bool(((total > 0) & torch.isfinite(total)).all()):
        raise GenerationError("sampling: the processed scores of a row leave no token to draw (all -inf or NaN)")
    # u in (0, 1]: the first entry whose cumulative sum reaches u * total has a probability > 0
    u = 1.0 - torch.rand(total.shape, dtype=torch.float64, device=probs.device, generator=generator)
    return torch.searchsorted(cum, u * total).squeeze(1)


def pick(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None) -> torch.Tensor:
    """[N]: the next token of each row; a draw uses `generator` (None: torch's default one)."""
    if do_sample:
        return draw(scores.softmax(dim=-1), generator)
    picked = native_rows.argmax(scores)
    return scores.argmax(dim=-1) if picked is None else picked


def sample(model, plan: Plan, rows: torch.Tensor, logits: torch.Tensor, processors, criteria,
           streamer=None, generator=None) -> dict:
    """Decode from `rows` [N, L] (prompt or decoder start, one per returned sequence) whose next-token
    logits are `logits` [N, V]. Rows that finish (an end token) continue with the pad token until every
    row has finished or max_length is reached."""
    s = plan.settings
    n, length = rows.shape
    out = torch.empty(n, plan.max_length, dtype=torch.long, device=rows.device)
    out[:, :length] = rows
    running = torch.ones(n, dtype=torch.bool, device=rows.device)
    keep = s.return_dict_in_generate
    scores_seen = [] if keep and s.output_scores else None
    logits_seen = [] if keep and s.output_logits else None
    # as in Transformers, only an end token makes finished rows continue with the pad token: a row that
    # met a stop string (or a caller's criterion) without one goes on with what it draws
    pad = plan.pad if plan.eos is not None else None
    while True:
        logits = logits.to(dtype=torch.float32, copy=True)
        scores = apply(processors, out[:, :length], logits)
        if scores_seen is not None:
            scores_seen.append(scores)
        if logits_seen is not None:
            logits_seen.append(logits)
        token = pick(scores, s.do_sample, generator)
        if pad is not None:
            token = torch.where(running, token, pad)
        out[:, length] = token
        length += 1
        running &= ~any_done(criteria, out[:, :length], None if scores_seen is None else tuple(scores_seen))
        if streamer is not None:
            streamer.put(token.cpu())
        if not bool(running.any()):
            break
        logits = model.step(token)
    if streamer is not None:
        streamer.end()
    return {"sequences": out[:, :length],
            "scores": None if scores_seen is None else tuple(scores_seen),
            "logits": None if logits_seen is None else tuple(logits_seen)}
