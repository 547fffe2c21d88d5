"""Generation defaults as Transformers takes them from a checkpoint (generation_config.json, else
config.json), per-call overrides, and our errors for arguments that cannot be used."""
from __future__ import annotations

import json

import pytest
import torch

import runtime
from runtime.errors import ConfigError, GenerationError
from runtime.generation import GenerationConfig
from tests.generation_models import an_emitted_token, both, make, prompt

transformers = pytest.importorskip("transformers")


def rewrite(path, **changes):
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("pad", [None, 0])
def test_end_token_of_generation_config_json_stops_rows_and_pads_them_like_transformers(tmp_path, pad):
    """config.json and generation_config.json say eos=E: generate stops rows at E without being told,
    and finished rows continue with the pad token (default: the end token)."""
    _, ours = make("llama", tmp_path / "a", seed=3)
    ids, mask = prompt(97, pad=2)
    eos = an_emitted_token(ours, ids, mask, position=3, row=1)
    folder = tmp_path / "a"
    rewrite(folder / "config.json", eos_token_id=eos)
    rewrite(folder / "generation_config.json", eos_token_id=eos, **({} if pad is None else {"pad_token_id": pad}))
    ref = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    ours = runtime.from_pretrained(folder)
    have, want = both(ref, ours, ids, attention_mask=mask)
    assert have.tolist() == want.tolist()
    new = have[1, ids.shape[1]:].tolist()
    ended = new.index(eos)          # row 1 ends at the token's first appearance (by step 4 of the free run)
    assert ended <= 3 and new[ended + 1:] == [eos if pad is None else pad] * (len(new) - ended - 1)


def test_t5_pads_finished_rows_with_its_pad_token_not_the_end_token(tmp_path):
    ref, ours = make("t5", tmp_path / "t5", seed=3)
    ids, mask = prompt(99, pad=0)
    eos = an_emitted_token(ours, ids, mask, position=2, row=1)
    rewrite(tmp_path / "t5" / "generation_config.json", eos_token_id=eos)
    ref = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval()
    ours = runtime.from_pretrained(tmp_path / "t5")
    have, want = both(ref, ours, ids, attention_mask=mask, max_new_tokens=8)
    assert have.tolist() == want.tolist()
    assert int(have[1, -1]) == 0 and eos != 0


def test_without_generation_config_json_the_config_json_fields_count(tmp_path):
    ref, ours = make("gpt2", tmp_path / "g", seed=3)
    ids, _ = prompt(97, batch=1)
    eos = an_emitted_token(ours, ids, position=2)
    (tmp_path / "g" / "generation_config.json").unlink()
    rewrite(tmp_path / "g" / "config.json", eos_token_id=eos, no_repeat_ngram_size=2)
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "g").eval()
    ours = runtime.from_pretrained(tmp_path / "g")
    assert ours.generation_config.eos_token_id == eos and ours.generation_config.no_repeat_ngram_size == 2
    have, want = both(ref, ours, ids)
    assert have.tolist() == want.tolist()


def test_the_default_length_is_twenty_new_tokens_capped_by_the_model_positions(tmp_path):
    ref, ours = make("gpt2", tmp_path / "g", seed=3, eos_token_id=None)   # n_positions=64
    short, _ = prompt(97, batch=1, length=5)
    long, _ = prompt(97, batch=1, length=60)
    for ids, new in ((short, 20), (long, 4)):
        have, want = both(ref, ours, ids)
        assert have.tolist() == want.tolist() and have.shape[1] == ids.shape[1] + new


def test_max_length_from_generation_config_json_counts_the_prompt(tmp_path):
    _, ours = make("llama", tmp_path / "l", seed=3, eos_token_id=None)
    rewrite(tmp_path / "l" / "generation_config.json", max_length=9)
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "l").eval()
    ours = runtime.from_pretrained(tmp_path / "l")
    ids, _ = prompt(97, batch=1, length=6)
    have, want = both(ref, ours, ids)
    assert have.tolist() == want.tolist() and have.shape[1] == 9


def test_a_per_call_generation_config_and_keyword_arguments_override_the_checkpoint(tmp_path):
    ref, ours = make("llama", tmp_path / "l", seed=3)
    ids, mask = prompt(97, pad=2)
    call = dict(max_new_tokens=6, num_beams=3, length_penalty=0.5)
    have = ours.generate(ids, attention_mask=mask, generation_config=GenerationConfig(**call), num_beams=2)
    with torch.no_grad():
        want = ref.generate(ids, attention_mask=mask, generation_config=transformers.GenerationConfig(**call),
                            num_beams=2)
    assert have.tolist() == want.tolist()


def test_config_readers_take_nested_decoder_settings_and_keep_unknown_file_keys():
    hf = {"eos_token_id": None, "text_config": {"eos_token_id": [5, 6], "pad_token_id": 0}, "n_positions": 77}
    config = GenerationConfig.from_model_config(hf)
    assert config.eos_token_id == [5, 6] and config.pad_token_id == 0 and config.max_position_embeddings == 77
    config = GenerationConfig.from_dict({"do_sample": True, "top_p": 0.9, "my_own_key": 1, "use_cache": True})
    assert config.to_dict() == {"do_sample": True, "top_p": 0.9} and config.extra == {"my_own_key": 1}


def test_an_unknown_argument_is_our_error_naming_it(tmp_path):
    _, ours = make("llama", tmp_path / "l")
    ids, _ = prompt(97, batch=1)
    with pytest.raises(GenerationError, match="unknown generation argument 'max_new_token'"):
        ours.generate(ids, max_new_token=3)
    with pytest.raises(GenerationError, match="unknown generation argument 'topk'"):
        GenerationConfig(topk=3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(do_sample=True, temperature=0.0), "temperature must be a number > 0"),
    (dict(top_p=1.5), r"top_p must be a number in \[0, 1\]"),
    (dict(num_beams=0), "num_beams must be an integer >= 1"),
    (dict(eos_token_id="2"), "eos_token_id must be a token id or a non-empty list"),
    (dict(bad_words_ids=[[]]), "bad_words_ids must be a non-empty list of non-empty lists"),
    (dict(early_stopping="sometimes"), "early_stopping must be True, False or \"never\""),
    (dict(num_return_sequences=2), "greedy decoding returns one sequence"),
    (dict(num_beams=2, num_return_sequences=3), r"num_return_sequences \(3\) must be at most num_beams \(2\)"),
    (dict(max_new_tokens=2, max_length=3, min_length=0, num_beams=1, stop_strings="x"), "stop_strings need a tokenizer"),
    (dict(max_length=4), "the input is 5 tokens long but max_length is 4"),
    (dict(num_beam_groups=2), "num_beam_groups=2 is a Transformers feature graphspec does not implement"),
    (dict(suppress_tokens=[4], forced_eos_token_id=4), "every token of forced_eos_token_id"),
    (dict(do_sample=True, suppress_tokens=list(range(97))), "leave no token to draw"),
])
def test_a_bad_setting_is_our_error_naming_it(tmp_path, kwargs, match):
    _, ours = make("llama", tmp_path / "l")
    ids, _ = prompt(97, batch=1, length=5)
    with pytest.raises(GenerationError, match=match):
        ours.generate(ids, **kwargs)


def test_a_streamer_cannot_follow_beam_search(tmp_path):
    _, ours = make("llama", tmp_path / "l")

    class Sink:
        def put(self, value):
            pass

        def end(self):
            pass
    with pytest.raises(GenerationError, match="a streamer cannot follow beam search"):
        ours.generate(prompt(97, batch=1)[0], num_beams=2, streamer=Sink())


def test_a_bad_generation_config_json_names_the_file_and_key(tmp_path):
    make("llama", tmp_path / "l")
    rewrite(tmp_path / "l" / "generation_config.json", top_k=-3)
    with pytest.raises(ConfigError, match=r"generation_config.json: top_k must be an integer >= 0 \(0 turns it off\), got -3"):
        runtime.from_pretrained(tmp_path / "l")
    (tmp_path / "l" / "generation_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="generation_config.json:1:2: not valid JSON"):
        runtime.from_pretrained(tmp_path / "l")


def test_a_transformers_only_option_in_the_checkpoint_is_refused_when_it_would_matter(tmp_path):
    make("llama", tmp_path / "l")
    rewrite(tmp_path / "l" / "generation_config.json", epsilon_cutoff=0.0, use_cache=True)
    ours = runtime.from_pretrained(tmp_path / "l")
    ids, _ = prompt(97, batch=1)
    assert ours.generate(ids, max_new_tokens=2).shape[1] == ids.shape[1] + 2     # inert values are fine
    rewrite(tmp_path / "l" / "generation_config.json", epsilon_cutoff=0.1)
    ours = runtime.from_pretrained(tmp_path / "l")
    with pytest.raises(GenerationError, match="epsilon_cutoff=0.1 is a Transformers feature"):
        ours.generate(ids, max_new_tokens=2)
    assert ours.generate(ids, max_new_tokens=2, epsilon_cutoff=0.0).shape[1] == ids.shape[1] + 2
