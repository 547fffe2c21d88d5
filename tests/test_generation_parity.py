"""generate against Transformers' on tiny random Llama, GPT-2 and T5 checkpoints: beam search, greedy
with logits processors, sampling under the same seed, returned scores; and the cache serving beams
(the prompt and the encoder run once per input row)."""
from __future__ import annotations

import pytest
import torch

from tests.generation_models import an_emitted_token, both, make, prompt

transformers = pytest.importorskip("transformers")

FAMILIES = ["llama", "gpt2", "t5"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    ref, ours = make(request.param, tmp_path_factory.mktemp(request.param) / "ckpt", seed=3)
    # row 0 left-padded (a decoder's prompt) or a padded source (T5's encoder input)
    ids, mask = prompt(ref.config.vocab_size, pad=2)
    if request.param == "t5":
        ids, mask = ids.flip(1), mask.flip(1)
    eos = an_emitted_token(ours, ids, mask, position=4, row=1)
    return request.param, ref, ours, ids, mask, eos


BEAMS = {
    "plain": dict(num_beams=4),
    "length_penalty": dict(num_beams=4, length_penalty=2.5),
    "negative_length_penalty": dict(num_beams=4, length_penalty=-0.7),
    "early_stopping": dict(num_beams=4, early_stopping=True),
    "never_stop_early": dict(num_beams=4, early_stopping="never", length_penalty=1.5),
    "two_returned": dict(num_beams=4, num_return_sequences=2),
    "two_returned_early_penalised": dict(num_beams=4, num_return_sequences=2, early_stopping=True, length_penalty=0.3),
}


@pytest.mark.parametrize("name", list(BEAMS))
def test_beam_search_tokens_match_transformers(family, name):
    fam, ref, ours, ids, mask, eos = family
    # two end tokens widen the candidates kept per step (K = (1 + end tokens) * num_beams)
    end = [eos, 5] if name in ("plain", "two_returned") else eos
    have, want = both(ref, ours, ids, attention_mask=mask, max_new_tokens=10, eos_token_id=end, **BEAMS[name])
    assert have.tolist() == want.tolist()
    assert have.shape[0] == ids.shape[0] * BEAMS[name].get("num_return_sequences", 1)


def test_beam_search_without_an_end_token_matches_transformers(family):
    fam, ref, ours, ids, mask, _ = family
    have, want = both(ref, ours, ids, attention_mask=mask, max_new_tokens=9, num_beams=4, eos_token_id=None)
    assert have.tolist() == want.tolist()


def test_beam_scores_and_indices_match_transformers(family):
    fam, ref, ours, ids, mask, eos = family
    kwargs = dict(attention_mask=mask, max_new_tokens=8, num_beams=3, num_return_sequences=2, eos_token_id=eos,
                  return_dict_in_generate=True, output_scores=True, output_logits=True)
    have, want = both(ref, ours, ids, **kwargs)
    assert have.sequences.tolist() == want.sequences.tolist()
    assert have.beam_indices.tolist() == want.beam_indices.tolist()
    assert (have.sequences_scores - want.sequences_scores).abs().max() <= 1e-4
    assert len(have.scores) == len(want.scores) and len(have.logits) == len(want.logits)
    for ours_step, ref_step in zip(have.scores, want.scores):
        finite = torch.isfinite(ref_step)
        assert torch.equal(finite, torch.isfinite(ours_step))
        assert (ours_step[finite] - ref_step[finite]).abs().max() <= 1e-4


GREEDY = {
    "repetition_penalty": dict(repetition_penalty=1.6),
    "no_repeat_ngram_size": dict(no_repeat_ngram_size=2),
    "bad_words_ids": dict(bad_words_ids=[[5], [6, 7], [8, 9, 10]]),
    "forced_bos_and_eos": dict(forced_bos_token_id=11, forced_eos_token_id=12),
    "suppressed": dict(suppress_tokens=[13, 14, 15], begin_suppress_tokens=[16, 17]),
    "min_new_tokens": dict(min_new_tokens=8),
    "sequence_bias": dict(sequence_bias={(18,): 4.0, (19, 20): -2.0}),
    "all_together": dict(repetition_penalty=1.3, no_repeat_ngram_size=3, bad_words_ids=[[5]], suppress_tokens=[6],
                         min_new_tokens=3, renormalize_logits=True),
}


@pytest.mark.parametrize("name", list(GREEDY))
def test_greedy_with_logits_processors_matches_transformers(family, name):
    fam, ref, ours, ids, mask, eos = family
    have, want = both(ref, ours, ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos, **GREEDY[name])
    assert have.tolist() == want.tolist(), name


def test_a_processor_changes_what_greedy_decoding_picks(family):
    """So that the processor tests above compare something: without the penalty the tokens differ."""
    fam, ref, ours, ids, mask, eos = family
    plain = ours.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=None)
    banned = ours.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=None, no_repeat_ngram_size=1)
    assert plain.tolist() != banned.tolist()


SAMPLING = {
    "plain": dict(do_sample=True),
    "warped": dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9),
    "min_p_typical": dict(do_sample=True, min_p=0.05, typical_p=0.9, temperature=1.3, repetition_penalty=1.2),
    "beam_sampling": dict(do_sample=True, num_beams=3, num_return_sequences=2),
}


@pytest.mark.parametrize("name", list(SAMPLING))
def test_sampling_scores_match_transformers(family, name):
    """The first step's processed scores (the whole processor and warper chain, in order) equal
    Transformers'; they do not depend on what is drawn."""
    fam, ref, ours, ids, mask, eos = family
    have, want = both(ref, ours, ids, attention_mask=mask, max_new_tokens=3, eos_token_id=eos,
                      return_dict_in_generate=True, output_scores=True, **SAMPLING[name])
    first, ref_first = have.scores[0], want.scores[0]
    finite = torch.isfinite(ref_first)
    assert torch.equal(finite, torch.isfinite(first))
    assert (first[finite] - ref_first[finite]).abs().max() <= 1e-4


def test_beam_sampling_under_the_same_seed_matches_transformers(family):
    """Beam sampling draws its K candidates with torch.multinomial, as Transformers does: the same seed
    gives the same tokens."""
    fam, ref, ours, ids, mask, eos = family
    have, want = both(ref, ours, ids, seed=11, attention_mask=mask, max_new_tokens=10, eos_token_id=eos,
                      **SAMPLING["beam_sampling"])
    assert have.tolist() == want.tolist()


def test_top_k_one_sampling_is_greedy_decoding(family):
    fam, ref, ours, ids, mask, eos = family
    greedy = ours.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos)
    gen = torch.Generator().manual_seed(0)
    sampled = ours.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos, do_sample=True,
                            top_k=1, temperature=5.0, generator=gen)
    assert sampled.tolist() == greedy.tolist()


def test_a_fixed_generator_gives_the_same_samples_every_run(family):
    fam, ref, ours, ids, mask, eos = family

    def draw(seed):
        return ours.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=True, top_k=0,
                             num_return_sequences=4, generator=torch.Generator().manual_seed(seed)).tolist()
    torch.manual_seed(0)
    first = draw(7)
    torch.manual_seed(1)      # the global generator is not what the draws use
    assert draw(7) == first
    assert draw(8) != first


def test_the_prompt_runs_once_per_input_row_and_beams_reuse_its_cache(family):
    """Prefill at the input batch size, then one token per beam per step: the prompt's keys and values
    are copied to the beams, not computed again (T5: the encoder runs once, on the sources)."""
    fam, ref, ours, ids, mask, eos = family
    calls = []
    layer = {"t5": lambda: ours.net.encoder.layers[0], "llama": lambda: ours.net.layers[0],
             "gpt2": lambda: ours.net.h[0]}[fam]()
    handle = layer.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape[:2])))
    try:
        ours.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=4, eos_token_id=None)
    finally:
        handle.remove()
    batch, length = ids.shape
    if fam == "t5":
        assert calls == [(batch, length)]
    else:
        assert calls[0] == (batch, length)
        assert calls[1:] == [(batch * 4, 1)] * 5


def test_an_encoder_decoder_continues_a_given_decoder_prompt_like_transformers(tmp_path):
    ref, ours = make("t5", tmp_path / "t5", seed=3)
    ids, mask = prompt(99, pad=0)
    for decoder_prompt in ([[0, 7, 9], [0, 11, 12]], [[7, 9], [11, 12]]):
        have, want = both(ref, ours, ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None, num_beams=2,
                          decoder_input_ids=torch.tensor(decoder_prompt))
        assert have.tolist() == want.tolist()
        assert have[:, 1:3].tolist() == [row[-2:] for row in decoder_prompt]


def test_beams_crossing_longropes_original_context_match_transformers(tmp_path):
    """Phi-3's LongRoPE switches factors past the original context, and the cache is computed again:
    the reordered beams must be what is computed again."""
    from tests.test_phi3_parity import LONGROPE, PHI3
    ref, _, ours = PHI3.make(tmp_path / "longrope", LONGROPE)
    ids, mask = prompt(97, pad=2, length=6)
    for kwargs in (dict(num_beams=3, num_return_sequences=2), dict(num_beams=2, do_sample=True)):
        have, want = both(ref, ours, ids, attention_mask=mask, max_new_tokens=8, eos_token_id=None, **kwargs)
        assert have.tolist() == want.tolist()
