"""Sampling draws from the filtered softmax: 4000 first tokens for a fixed prompt, drawn with a fixed
generator, against the distribution Transformers' own warpers make of Transformers' logits. Pearson's
chi-square at significance 0.001 (deterministic: the seed is fixed); a token the filters remove must
never be drawn. A control shows the test rejects draws that ignore a filter."""
from __future__ import annotations

import pytest
import torch

from tests.generation_models import make, prompt

transformers = pytest.importorskip("transformers")
tlp = pytest.importorskip("transformers.generation.logits_process")

DRAWS = 4000
ALPHA = 1e-3
COMBOS = {
    "temperature": dict(temperature=0.6),
    "hot_top_k": dict(temperature=1.8, top_k=12),
    "top_p": dict(top_p=0.8),
    "min_p": dict(min_p=0.08),
    "everything": dict(temperature=0.8, top_k=30, top_p=0.9, min_p=0.02),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    ref, ours = make("llama", tmp_path_factory.mktemp("dist") / "ckpt", seed=5, head_scale=3.0)
    ids, _ = prompt(97, batch=1, length=5, seed=2)
    with torch.no_grad():
        logits = ref(ids).logits[:, -1].float()
    return ours, ids, logits


def expected_probs(logits, settings: dict) -> torch.Tensor:
    """Transformers' warpers, in Transformers' order, then softmax."""
    chain = []
    if settings.get("temperature", 1.0) != 1.0:
        chain.append(tlp.TemperatureLogitsWarper(settings["temperature"]))
    if settings.get("top_k", 0):
        chain.append(tlp.TopKLogitsWarper(settings["top_k"]))
    if settings.get("top_p", 1.0) < 1.0:
        chain.append(tlp.TopPLogitsWarper(settings["top_p"]))
    if settings.get("min_p") is not None:
        chain.append(tlp.MinPLogitsWarper(settings["min_p"]))
    scores = logits.clone()
    for warper in chain:
        scores = warper(None, scores)
    return scores.softmax(-1)[0]


def draws(ours, ids, settings: dict, seed: int = 0) -> torch.Tensor:
    out = ours.generate(ids, max_new_tokens=1, do_sample=True, num_return_sequences=DRAWS, eos_token_id=None,
                        generator=torch.Generator().manual_seed(seed), **{"top_k": 0, **settings})
    return out[:, -1]


def chi_square_p_value(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's test; tokens expected fewer than 5 times are pooled into one bin."""
    observed = torch.bincount(samples, minlength=probs.numel()).double()
    expected = probs.double() * samples.numel()
    big = expected >= 5
    obs = torch.cat([observed[big], observed[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    if exp[-1] < 5:          # a small pooled bin joins the smallest large one
        smallest = int(exp[:-1].argmin())
        obs[smallest] += obs[-1]
        exp[smallest] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.double), stat / 2))


@pytest.mark.parametrize("name", list(COMBOS))
def test_first_tokens_follow_the_filtered_softmax(model, name):
    ours, ids, logits = model
    probs = expected_probs(logits, COMBOS[name])
    kept = int((probs > 0).sum())
    filtering = any(key in COMBOS[name] for key in ("top_k", "top_p", "min_p"))
    assert kept >= 3 and (kept < probs.numel()) == filtering, "a filter must cut some tokens and keep a few"
    samples = draws(ours, ids, COMBOS[name])
    assert bool((probs[samples] > 0).all()), "a filtered-out token was drawn"
    assert chi_square_p_value(samples, probs) > ALPHA


def test_the_chi_square_test_rejects_draws_that_ignore_a_filter(model):
    ours, ids, logits = model
    samples = draws(ours, ids, COMBOS["hot_top_k"])
    unfiltered = expected_probs(logits, dict(COMBOS["hot_top_k"], top_k=0))
    assert chi_square_p_value(samples, unfiltered) < ALPHA
    hotter = draws(ours, ids, dict(temperature=2.5, top_k=12))
    assert chi_square_p_value(hotter, expected_probs(logits, COMBOS["hot_top_k"])) < ALPHA
