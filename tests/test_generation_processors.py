"""Each logits processor and sampling warper of runtime/generation against the Transformers processor of
the same name, on the same random scores and token ids: the outputs must be equal (same -inf cuts,
same values bit for bit)."""
from __future__ import annotations

import pytest
import torch

from runtime.errors import GenerationError
from runtime.generation import processors as P
from runtime.generation import warpers as W

tlp = pytest.importorskip("transformers.generation.logits_process")

VOCAB = 50


def case(seed: int, rows: int = 4, length: int = 12, vocab: int = VOCAB, scale: float = 3.0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=gen)
    if length >= 8:
        ids[:, -3:] = ids[:, 2:5]        # repeated n-grams, so n-gram bans have something to ban
    scores = scale * torch.randn(rows, vocab, generator=gen)
    scores[0, :3] = scores[0, 3]         # ties at a cut boundary
    return ids, scores


def assert_same(ours, theirs, ids, scores):
    before = scores.clone()
    got = ours(ids, scores)
    want = theirs(ids, scores.clone())
    torch.testing.assert_close(scores, before, rtol=0, atol=0, equal_nan=True, msg="a processor changed its input")
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


SEEDS = range(6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_transformers(seed, penalty):
    ids, scores = case(seed)
    assert_same(P.RepetitionPenalty(penalty), tlp.RepetitionPenaltyLogitsProcessor(penalty), ids, scores)
    ignore = torch.tensor([0, 3, 5, 11])        # left padding of each row is not "already generated"
    assert_same(P.RepetitionPenalty(penalty, ignore),
                tlp.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=ignore), ids, scores)


def test_repetition_penalty_skips_ids_the_lm_head_cannot_produce():
    ids, scores = case(0)
    ids[0, 0] = VOCAB + 7
    assert_same(P.RepetitionPenalty(1.5), tlp.RepetitionPenaltyLogitsProcessor(1.5), ids, scores)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 2, 3, 13])
def test_no_repeat_ngram_matches_transformers(seed, n):
    ids, scores = case(seed)
    ours = P.NoRepeatNGram(n)
    assert_same(ours, tlp.NoRepeatNGramLogitsProcessor(n), ids, scores)
    if n == 2:
        assert bool(torch.isinf(ours(ids, scores)).any()), "the repeated bigram must be banned"


@pytest.mark.parametrize("seed", SEEDS)
def test_bad_words_match_transformers_and_spare_a_lone_end_token(seed):
    ids, scores = case(seed)
    bad = [[int(ids[0, -1]), 4], [7], [3], [int(ids[1, -2]), int(ids[1, -1]), 9], [11, 12]]
    for eos in (None, 3, [3, 7]):
        eos_list = None if eos is None else ([eos] if isinstance(eos, int) else eos)
        assert_same(P.bad_words(bad, eos_list), tlp.NoBadWordsLogitsProcessor(bad, eos_token_id=eos), ids, scores)


def test_sequence_bias_matches_transformers():
    ids, scores = case(1)
    bias = {(int(ids[0, -1]), 4): 2.5, (7,): -1.25, (int(ids[2, -2]), int(ids[2, -1]), 9): 0.5, (9,): 0.75}
    assert_same(P.SequenceBias(bias), tlp.SequenceBiasLogitsProcessor(bias), ids, scores)


def test_a_biased_token_outside_the_vocabulary_is_our_error_naming_the_option():
    ids, scores = case(0)
    with pytest.raises(GenerationError, match=r"bad_words_ids: token ids \[99\] are outside"):
        P.bad_words([[99]], None)(ids, scores)


@pytest.mark.parametrize("length", [5, 11, 12, 13])
def test_min_length_and_min_new_tokens_match_transformers(length):
    ids, scores = case(2)
    eos = torch.tensor([3, 8])
    assert_same(P.MinLength(length, eos), tlp.MinLengthLogitsProcessor(length, eos), ids, scores)
    assert_same(P.MinNewTokens(length - 5, 6, eos), tlp.MinNewTokensLengthLogitsProcessor(length - 5, 6, eos),
                ids, scores)


@pytest.mark.parametrize("length", [1, 2])
def test_forced_bos_matches_transformers(length):
    ids, scores = case(3, length=length)
    assert_same(P.ForcedBOS(5), tlp.ForcedBOSTokenLogitsProcessor(5), ids, scores)


@pytest.mark.parametrize("max_length", [12, 13, 14])
def test_forced_eos_matches_transformers(max_length):
    ids, scores = case(3)
    for eos in ([4], [4, 9]):
        assert_same(P.ForcedEOS(max_length, torch.tensor(eos)), tlp.ForcedEOSTokenLogitsProcessor(max_length, eos),
                    ids, scores)


@pytest.mark.parametrize("begin", [11, 12])
def test_suppress_tokens_and_suppress_at_begin_match_transformers(begin):
    ids, scores = case(4)
    assert_same(P.SuppressTokens([1, 4, 49, 70]), tlp.SuppressTokensLogitsProcessor([1, 4, 49, 70]), ids, scores)
    assert_same(P.SuppressTokensAtBegin([2, 5], begin), tlp.SuppressTokensAtBeginLogitsProcessor([2, 5], begin),
                ids, scores)


def test_invalid_value_removal_and_renormalisation_match_transformers():
    ids, scores = case(5)
    scores[0, 1], scores[1, 2], scores[2, 3] = float("nan"), float("inf"), float("-inf")
    assert_same(P.remove_invalid_values, tlp.InfNanRemoveLogitsProcessor(), ids, scores)
    assert_same(P.renormalize, tlp.LogitNormalization(), ids, case(5)[1])


@pytest.mark.parametrize("seed", SEEDS)
def test_temperature_matches_transformers(seed):
    ids, scores = case(seed)
    for t in (0.3, 1.7):
        assert_same(W.Temperature(t), tlp.TemperatureLogitsWarper(t), ids, scores)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k, keep", [(1, 1), (3, 1), (3, 5), (VOCAB + 5, 1)])
def test_top_k_matches_transformers(seed, k, keep):
    ids, scores = case(seed)
    assert_same(W.TopK(k, keep), tlp.TopKLogitsWarper(k, min_tokens_to_keep=keep), ids, scores)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p, keep", [(0.0, 1), (0.3, 1), (0.9, 1), (0.9, 4), (1.0, 1)])
def test_top_p_matches_transformers(seed, p, keep):
    ids, scores = case(seed)
    assert_same(W.TopP(p, keep), tlp.TopPLogitsWarper(p, min_tokens_to_keep=keep), ids, scores)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p, keep", [(0.0, 1), (0.05, 1), (0.3, 1), (0.3, 6), (1.0, 1)])
def test_min_p_matches_transformers(seed, p, keep):
    ids, scores = case(seed)
    assert_same(W.MinP(p, keep), tlp.MinPLogitsWarper(p, min_tokens_to_keep=keep), ids, scores)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mass, keep", [(0.2, 1), (0.9, 1), (0.9, 5)])
def test_typical_p_matches_transformers(seed, mass, keep):
    ids, scores = case(seed)
    assert_same(W.Typical(mass, keep), tlp.TypicalLogitsWarper(mass, min_tokens_to_keep=keep), ids, scores)


def test_warpers_on_already_cut_scores_match_transformers():
    """Beam sampling and chained warpers see -inf entries: the cuts must still agree."""
    ids, scores = case(6)
    scores[:, ::3] = float("-inf")
    for ours, theirs in ((W.TopP(0.8), tlp.TopPLogitsWarper(0.8)), (W.MinP(0.2), tlp.MinPLogitsWarper(0.2)),
                         (W.TopK(4), tlp.TopKLogitsWarper(4)), (W.Typical(0.7), tlp.TypicalLogitsWarper(0.7))):
        assert_same(ours, theirs, ids, scores)
