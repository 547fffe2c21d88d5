"""Sampling warpers with Transformers' semantics: they reshape the next-token distribution before a
draw (temperature) or cut its tail to -inf (top-k, top-p, min-p, typical). Same call shape as the
processors: `(ids [N, L], scores [N, V]) -> scores`. `keep` is the least number of tokens a
cut leaves (beam sampling keeps one more than the end tokens, so a beam can always continue).

The cuts compute their thresholds with the same operations, in the same order, as Transformers,
so that a token on the boundary is kept or cut alike.
"""
from __future__ import annotations

import math

import torch

NEG_INF = -math.inf


class Temperature:
    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, ids, scores):
        return scores / self.temperature


class TopK:
    """Keep the `k` highest scores (and every token tied with the k-th)."""

    def __init__(self, k: int, keep: int = 1):
        self.k = max(k, keep)

    def __call__(self, ids, scores):
        k = min(self.k, scores.shape[-1])
        kth = torch.topk(scores, k).values[..., -1:]
        return scores.masked_fill(scores < kth, NEG_INF)


class TopP:
    """Keep the smallest set of most likely tokens whose probability reaches `p` (nucleus)."""

    def __init__(self, p: float, keep: int = 1):
        self.p, self.keep = p, keep

    def __call__(self, ids, scores):
        ascending, order = torch.sort(scores, descending=False)
        mass_below = ascending.softmax(dim=-1).cumsum(dim=-1)
        # a token goes when the tokens less likely than it, itself included, hold at most 1 - p
        cut = mass_below <= 1 - self.p
        cut[..., -self.keep:] = False
        return scores.masked_fill(cut.scatter(1, order, cut), NEG_INF)


class MinP:
    """Keep tokens whose probability is at least `p` times the most likely token's."""

    def __init__(self, p: float, keep: int = 1):
        self.p, self.keep = p, keep

    def __call__(self, ids, scores):
        probs = scores.softmax(dim=-1)
        cut = probs < self.p * probs.amax(dim=-1, keepdim=True)
        best = torch.topk(probs, min(self.keep, probs.shape[-1]), dim=-1).indices
        cut.scatter_(-1, best, False)
        return scores.masked_fill(cut, NEG_INF)


class Typical:
    """Locally typical sampling: keep the tokens whose surprise is closest to the distribution's
    entropy, until they hold `mass` of the probability."""

    def __init__(self, mass: float, keep: int = 1):
        self.mass, self.keep = mass, keep

    def __call__(self, ids, scores):
        logp = scores.log_softmax(dim=-1)
        entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)
        distance, order = torch.sort((-logp - entropy).abs(), descending=False)
        mass = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
        last = (mass < self.mass).sum(dim=1).clamp_(max=distance.shape[-1] - 1)
        cut = distance > distance.gather(1, last.view(-1, 1))
        cut[..., :self.keep] = False
        return scores.masked_fill(cut.scatter(1, order, cut), NEG_INF)
