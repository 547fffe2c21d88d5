"""Beam search (and beam sampling) with Transformers' scoring and bookkeeping.

Per input row, `num_beams` running hypotheses carry their summed log-probabilities. Each step
takes the best K = max(2, 1 + end tokens) * num_beams continuations over all beams (or draws K
without replacement when sampling), so that num_beams of them can go on even when the best ones
end. A continuation that meets a stopping criterion among the top num_beams becomes a finished
hypothesis scored sum / new_length ** length_penalty; the num_beams best finished ones are kept.
The search stops for an input row when no running beam can beat its worst finished one
(early_stopping: False — a heuristic on the current length; "never" — the best possible length
when length_penalty > 0; True — as soon as num_beams hypotheses have finished).

Masked entries use Transformers' -1e9 offsets, not -inf, and the same float operations, so ties
between masked candidates fall the same way.
"""
from __future__ import annotations

import torch

from runtime.generation.chain import apply
from runtime.generation.plan import Plan
from runtime.generation.stopping import any_done

MASKED = -1.0e9


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t [B, K, ...] indexed along dim 1 by idx [B, J] -> [B, J, ...]."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


class Beams:
    """The running and finished hypotheses of every input row."""

    def __init__(self, plan: Plan, rows: torch.Tensor):
        s = plan.settings
        self.beams = s.num_beams
        n, self.prompt = rows.shape
        self.batch = n // self.beams
        device = rows.device
        eos = plan.eos
        self.k = max(2, 1 + (0 if eos is None else len(eos))) * self.beams
        self.top = torch.arange(self.k, device=device) < self.beams
        # Transformers fills unreached positions with the pad token, or the first end token when the
        # pad token is 0 (a tensor's truth value decides there), or -1 without end tokens
        fill = (plan.pad if plan.pad else int(eos[0])) if eos is not None else -1
        self.running = torch.full((self.batch, self.beams, plan.max_length), fill, dtype=torch.long, device=device)
        self.running[:, :, :self.prompt] = rows.view(self.batch, self.beams, self.prompt)
        self.finished = self.running.clone()
        self.running_scores = torch.zeros(self.batch, self.beams, dtype=torch.float, device=device)
        self.running_scores[:, 1:] = MASKED        # the copies of the prompt must not all be picked
        self.finished_scores = torch.full((self.batch, self.beams), MASKED, dtype=torch.float, device=device)
        self.is_finished = torch.zeros(self.batch, self.beams, dtype=torch.bool, device=device)
        self.can_improve = torch.ones(self.batch, 1, dtype=torch.bool, device=device)
        self.hits = torch.zeros(self.batch, self.beams, dtype=torch.bool, device=device)
        self.running_origin = torch.full((self.batch, self.beams, plan.max_length - self.prompt), -1,
                                         dtype=torch.int32, device=device)
        self.finished_origin = self.running_origin.clone()


def beam_search(model, plan: Plan, rows: torch.Tensor, logits: torch.Tensor, processors, criteria,
                generator=None) -> dict:
    """Decode from `rows` [B * num_beams, L] (each input row repeated) with next-token logits [N, V]."""
    s = plan.settings
    b = Beams(plan, rows)
    batch, beams, prompt = b.batch, b.beams, b.prompt
    length = prompt
    flat = rows
    keep = s.return_dict_in_generate
    scores_seen = [] if keep and s.output_scores else None
    logits_seen = [] if keep and s.output_logits else None
    while True:
        logits = logits.to(dtype=torch.float32, copy=True)
        logp = apply(processors, flat, torch.log_softmax(logits, dim=-1))
        if logits_seen is not None:
            logits_seen.append(logits.clone())
        if scores_seen is not None:
            scores_seen.append(logp.clone())
        vocab = logp.shape[-1]
        total = (logp.view(batch, beams, vocab) + b.running_scores[:, :, None]).reshape(batch, beams * vocab)

        # the K best continuations over all beams of an input row (or K draws without replacement)
        if s.do_sample:
            chosen = torch.multinomial(torch.softmax(total, dim=-1), num_samples=b.k, generator=generator)
            cand_scores, order = torch.gather(total, 1, chosen).sort(dim=-1, descending=True)
            chosen = chosen.gather(-1, order)
        else:
            cand_scores, chosen = torch.topk(total, k=b.k)
        source = chosen // vocab
        cand = _take(b.running, source)
        cand[:, :, length] = chosen % vocab
        cand_origin = _take(b.running_origin, source)
        cand_origin[:, :, length - prompt] = source + torch.arange(batch, device=source.device)[:, None] * beams
        hits = any_done(criteria, cand[:, :, :length + 1].reshape(batch * b.k, length + 1),
                        None if scores_seen is None else tuple(scores_seen)).view(batch, b.k)

        # the best continuations that did not stop run on
        alive = cand_scores + hits.to(torch.float32) * MASKED
        best = torch.topk(alive, k=beams)[1]
        b.running, b.running_scores, b.running_origin = _take(cand, best), _take(alive, best), _take(cand_origin, best)

        # stopped continuations among the top num_beams compete with the finished hypotheses
        just_done = hits & b.top[None, :]
        done_scores = cand_scores / ((length + 1 - prompt) ** s.length_penalty)
        full = torch.all(b.is_finished, dim=-1, keepdim=True) & (s.early_stopping is True)
        done_scores += full.to(torch.float32) * MASKED
        done_scores += (~b.can_improve).to(torch.float32) * MASKED
        done_scores += (~just_done) * MASKED
        merged_scores = torch.cat((b.finished_scores, done_scores), dim=1)
        best = torch.topk(merged_scores, k=beams)[1]
        b.finished = _take(torch.cat((b.finished, cand), dim=1), best)
        b.finished_scores = _take(merged_scores, best)
        b.finished_origin = _take(torch.cat((b.finished_origin, cand_origin), dim=1), best)
        b.is_finished = _take(torch.cat((b.is_finished, just_done), dim=1), best)

        step_origin = b.running_origin[..., length - prompt]
        length += 1
        if not _continues(b, hits, length, plan):
            break
        model.reorder_cache(step_origin.reshape(-1).long())
        flat = b.running[:, :, :length].reshape(batch * beams, length)
        logits = model.step(flat[:, -1])
    return _outputs(b, s, scores_seen, logits_seen)


def _continues(b: Beams, hits: torch.Tensor, length: int, plan: Plan) -> bool:
    """Update whether each input row can still improve; True while the search goes on."""
    s = plan.settings
    if s.early_stopping == "never" and s.length_penalty > 0.0:
        best_length = plan.max_length - b.prompt
    else:
        best_length = length - b.prompt
    best_running = b.running_scores[:, :1] / (best_length ** s.length_penalty)
    worst_finished = torch.where(b.is_finished, torch.min(b.finished_scores, dim=1, keepdim=True)[0], MASKED)
    b.can_improve = b.can_improve & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
    all_full = bool(torch.all(b.is_finished)) and s.early_stopping is True
    return bool(torch.any(b.can_improve)) and not all_full and not bool(torch.all(hits))


def _outputs(b: Beams, s, scores_seen, logits_seen) -> dict:
    n = s.num_return_sequences
    sequences = b.finished[:, :n].reshape(b.batch * n, -1)
    scores = b.finished_scores[:, :n].reshape(-1)
    origin = b.finished_origin[:, :n].reshape(b.batch * n, -1)
    generated = int((origin != -1).sum(dim=1).max())
    return {"sequences": sequences[:, :b.prompt + generated],
            "sequences_scores": scores if s.output_scores else None,
            "scores": None if scores_seen is None else tuple(scores_seen),
            "logits": None if logits_seen is None else tuple(logits_seen),
            "beam_indices": origin[:, :generated]}
