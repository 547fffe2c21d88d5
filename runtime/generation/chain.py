"""The logits processors and stopping criteria of one generate call, in Transformers' order.

Processors: repetition_penalty, no_repeat_ngram_size, bad_words_ids, min_length, min_new_tokens,
forced_bos_token_id, forced_eos_token_id, remove_invalid_values, suppress_tokens,
begin_suppress_tokens, then the caller's own, then (sampling only) temperature, top_k, top_p, min_p,
typical_p, and renormalize_logits last. sequence_bias comes first, as in Transformers.
"""
from __future__ import annotations

from runtime.generation import processors as P
from runtime.generation import warpers as W
from runtime.generation.plan import Plan
from runtime.generation.stop_strings import StopStrings
from runtime.generation.stopping import EndToken, MaxLength


def logits_processors(plan: Plan, custom=()) -> list:
    s = plan.settings
    eos = plan.eos
    out = []
    if s.sequence_bias is not None:
        bias = s.sequence_bias
        out.append(P.SequenceBias(dict(bias) if isinstance(bias, dict) else {tuple(k): v for k, v in bias}))
    if s.repetition_penalty != 1.0:
        out.append(P.RepetitionPenalty(s.repetition_penalty, plan.padding_lengths))
    if s.no_repeat_ngram_size > 0:
        out.append(P.NoRepeatNGram(s.no_repeat_ngram_size))
    if s.bad_words_ids is not None:
        out.append(P.bad_words(s.bad_words_ids, None if eos is None else eos.tolist()))
    if eos is not None and plan.min_length > 0:
        out.append(P.MinLength(plan.min_length, eos))
    if eos is not None and s.min_new_tokens is not None and s.min_new_tokens > 0:
        out.append(P.MinNewTokens(plan.prompt_length, s.min_new_tokens, eos))
    if s.forced_bos_token_id is not None:
        out.append(P.ForcedBOS(s.forced_bos_token_id))
    if s.forced_eos_token_id is not None:
        forced = s.forced_eos_token_id
        out.append(P.ForcedEOS(plan.max_length, plan.as_ids(forced)))
    if s.remove_invalid_values:
        out.append(P.remove_invalid_values)
    if s.suppress_tokens is not None:
        out.append(P.SuppressTokens(s.suppress_tokens, plan.device))
    if s.begin_suppress_tokens is not None:
        # a decoder that starts from one token has the forced BOS as its first generated token
        begin = plan.prompt_length
        if plan.prompt_length == 1 and s.forced_bos_token_id is not None:
            begin += 1
        out.append(P.SuppressTokensAtBegin(s.begin_suppress_tokens, begin, plan.device))
    out.extend(custom)
    if s.do_sample:
        keep = 1
        if s.num_beams > 1:
            keep = (len(eos) if eos is not None else 1) + 1
        if s.temperature != 1.0:
            out.append(W.Temperature(s.temperature))
        if s.top_k != 0:
            out.append(W.TopK(s.top_k, keep))
        if s.top_p < 1.0:
            out.append(W.TopP(s.top_p, keep))
        if s.min_p is not None:
            out.append(W.MinP(s.min_p, keep))
        if s.typical_p < 1.0:
            out.append(W.Typical(s.typical_p, keep))
    if s.renormalize_logits:
        out.append(P.renormalize)
    return out


def stopping_criteria(plan: Plan, tokenizer=None, custom=()) -> list:
    out = [MaxLength(plan.max_length)]
    if plan.settings.stop_strings is not None:
        out.append(StopStrings(tokenizer, plan.settings.stop_strings))
    if plan.eos is not None:
        out.append(EndToken(plan.eos))
    out.extend(custom)
    return out


def apply(processors, ids, scores):
    for processor in processors:
        scores = processor(ids, scores)
    return scores
