"""The text side: the checkpoint's tokenizer and chat template against Transformers' tokenizer on the
same files, stop strings against Transformers' StopStringCriteria and generate, streamers (ours and
Transformers' TextIteratorStreamer) receiving text as it is generated."""
from __future__ import annotations

import copy

import threading

import pytest
import torch

import runtime
from runtime.errors import GenerationError
from runtime.generation.stop_strings import StopStrings
from runtime.generation.text_streamer import TextStreamer
from tests.text_checkpoints import CHAT_TEMPLATE, byte_level, llama_with_tokenizer, metaspace, write_tokenizer

transformers = pytest.importorskip("transformers")

TOKENIZERS = {"byte_level": byte_level, "metaspace": metaspace, "byte_fallback": lambda: metaspace(byte_fallback=True)}
TEXTS = ["Hello world! How are you?", " leading space, then\nnew lines\n\n", "日本語 ünïcode and 12345 #@!",
         "<|im_start|>user\nhi<|im_end|>", ""]
CHATS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4", "tool_calls": None}, {"role": "user", "content": "日本?"}],
]


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def tokenizers(request, tmp_path_factory):
    folder = write_tokenizer(tmp_path_factory.mktemp(request.param), TOKENIZERS[request.param]())
    return runtime.load_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(folder)


def test_encoding_decoding_and_special_tokens_match_transformers(tokenizers):
    ours, ref = tokenizers
    assert ours.special_tokens_map == ref.special_tokens_map
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (ref.bos_token_id, ref.eos_token_id, None)
    assert len(ours) == len(ref) and ours.get_vocab() == ref.get_vocab()
    for text in TEXTS:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids == ref(text, add_special_tokens=special)["input_ids"]
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    batch = ours(["a b", "Hello world! How are you?"], return_tensors="pt")
    assert batch["attention_mask"][0].tolist()[:2] == [0, 0] and bool(batch["attention_mask"][1].all())


@pytest.mark.parametrize("chat", range(len(CHATS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_renders_and_tokenizes_like_transformers(tokenizers, chat, add_generation_prompt):
    ours, ref = tokenizers
    kwargs = dict(add_generation_prompt=add_generation_prompt)
    assert ours.apply_chat_template(CHATS[chat], tokenize=False, **kwargs) == \
        ref.apply_chat_template(CHATS[chat], tokenize=False, **kwargs)
    assert ours.apply_chat_template(CHATS[chat], **kwargs) == \
        ref.apply_chat_template(CHATS[chat], return_dict=False, **kwargs)
    tools = [{"name": "añadir", "parameters": {"a": "int"}}]
    assert ours.apply_chat_template(CHATS[chat], tokenize=False, tools=tools, **kwargs) == \
        ref.apply_chat_template(CHATS[chat], tokenize=False, tools=tools, **kwargs)


def test_chat_template_errors_are_ours(tmp_path):
    ours = runtime.load_tokenizer(write_tokenizer(tmp_path / "a", byte_level()))
    with pytest.raises(GenerationError, match="refused the conversation: unknown role"):
        ours.apply_chat_template([{"role": "robot", "content": "x"}])
    with pytest.raises(GenerationError, match="non-empty list of messages"):
        ours.apply_chat_template([])
    bare = runtime.load_tokenizer(write_tokenizer(tmp_path / "b", byte_level(), chat_template=None))
    with pytest.raises(GenerationError, match="has no chat template"):
        bare.apply_chat_template(CHATS[0])
    broken = runtime.load_tokenizer(write_tokenizer(tmp_path / "c", byte_level(), chat_template="{% for %}"))
    with pytest.raises(GenerationError, match="does not parse"):
        broken.apply_chat_template(CHATS[0])


def test_a_chat_template_cannot_reach_python_internals(tmp_path):
    sneaky = "{{ messages.__class__.__mro__ }}{% set ns = namespace() %}{% set ns._x = 1 %}"
    ours = runtime.load_tokenizer(write_tokenizer(tmp_path / "a", byte_level(), chat_template=sneaky))
    with pytest.raises(Exception, match="unsafe|cannot set"):
        ours.apply_chat_template(CHATS[0])


def stop_string_cases(tok, count: int, seed: int):
    """Random id rows, and stop strings cut from the text of random token runs (so some rows match)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = len(tok)
    rows = torch.randint(0, vocab, (count, 9), generator=gen)
    strings = set()
    for r in range(0, count, 3):
        text = tok.decode(rows[r, -3:].tolist())
        if text.strip():
            start = int(torch.randint(0, max(1, len(text) - 1), (1,), generator=gen))
            strings.add(text[start:start + 1 + int(torch.randint(0, 5, (1,), generator=gen))])
    strings.update({".", " the", "end.", "\n", "日本", "ü", "[done]"})
    return rows, sorted(s for s in strings if s)


@pytest.mark.parametrize("seed", range(3))
def test_stop_strings_decide_like_transformers_stop_string_criteria(tokenizers, seed):
    from transformers.generation.stopping_criteria import StopStringCriteria
    ours, ref = tokenizers
    rows, strings = stop_string_cases(ours, 300, seed)
    hits = 0
    for start in range(0, len(strings), 4):
        group = strings[start:start + 4]
        want = StopStringCriteria(ref, group)(rows, None)
        got = StopStrings(ours, group)(rows, None)
        assert got.tolist() == want.tolist(), group
        hits += int(want.sum())
    assert hits >= 10, "too few rows matched for the comparison to mean much"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    # word pieces: the random model writes words and spaces, which streamers flush as they come
    ref, folder = llama_with_tokenizer(tmp_path_factory.mktemp("chat") / "ckpt", metaspace(), seed=2)
    ref = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    return ref, runtime.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder), folder


def test_from_pretrained_carries_the_checkpoint_tokenizer(chat_model):
    _, ours, ref_tok, folder = chat_model
    assert ours.tokenizer.encode("Hello world") == ref_tok("Hello world")["input_ids"]
    assert ours.tokenizer.chat_template == CHAT_TEMPLATE


def test_a_models_tokenizer_names_its_output_after_the_models_inputs(chat_model, tmp_path):
    _, ours, ref_tok, folder = chat_model
    batch = ours.tokenizer(["Hello world", "The quick brown fox"], return_tensors="pt")
    ref_tok = copy.deepcopy(ref_tok)
    ref_tok.pad_token = ref_tok.eos_token            # ours pads with the end token when there is no pad token
    want = ref_tok(["Hello world", "The quick brown fox"], return_tensors="pt", padding=True, padding_side="left")
    assert set(batch) == {"input_ids", "attention_mask"}        # llama's contract names them so
    assert torch.equal(batch["input_ids"], want["input_ids"]) and torch.equal(batch["attention_mask"], want["attention_mask"])
    assert ours.generate(**batch, max_new_tokens=3).shape == (2, batch["input_ids"].shape[1] + 3)
    # a spec whose inputs have other names gets a tokenizer speaking its names
    from tests.test_contract_runtime import v2_llama
    from compiler.pipeline import compile_spec
    renamed = runtime.load(compile_spec(v2_llama(tmp_path), tmp_path / "v2").directory, folder)
    batch = renamed.tokenizer(["Hello world", "The quick brown fox"], return_tensors="pt")
    assert set(batch) == {"tokens", "pad"}
    assert renamed.generate(**batch, max_new_tokens=3).tolist() == ours.generate(
        batch["tokens"], attention_mask=batch["pad"], max_new_tokens=3).tolist()


def test_generation_stops_at_a_stop_string_like_transformers(chat_model):
    ref, ours, ref_tok, _ = chat_model
    ids = torch.tensor([ours.tokenizer.encode("The quick brown fox")])
    free = ours.generate(ids, max_new_tokens=12, eos_token_id=None)[0, ids.shape[1]:]
    text = ours.tokenizer.decode(free)
    stop = text[len(text) // 2:len(text) // 2 + 2]
    want = ref.generate(ids, max_new_tokens=12, eos_token_id=None, stop_strings=[stop, "zzz"], tokenizer=ref_tok)
    have = ours.generate(ids, max_new_tokens=12, eos_token_id=None, stop_strings=[stop, "zzz"])
    assert have.tolist() == want.tolist()
    assert have.shape[1] < ids.shape[1] + 12 and stop in ours.tokenizer.decode(have[0, ids.shape[1]:])


def test_text_iterator_streamer_receives_text_while_generating(chat_model):
    _, ours, _, _ = chat_model
    tok = ours.tokenizer
    ids = torch.tensor([tok.encode("Hello world! How")])
    steps = []

    class Recording(transformers.TextIteratorStreamer):
        def on_finalized_text(self, text, stream_end=False):
            steps.append((text, stream_end, len(generated)))
            super().on_finalized_text(text, stream_end)
    generated = []

    def count_steps(input_ids, scores):
        generated.append(1)
        return scores
    streamer = Recording(tok, skip_prompt=True)
    thread = threading.Thread(target=lambda: generated.append(ours.generate(
        ids, max_new_tokens=24, eos_token_id=None, streamer=streamer, logits_processor=[count_steps])))
    thread.start()
    pieces = list(streamer)
    thread.join()
    out = generated.pop()
    assert "".join(pieces) == tok.decode(out[0, ids.shape[1]:])
    early = [text for text, end, step in steps if text and not end and step < 24]
    assert len(early) >= 2, "the text did not arrive while tokens were still being generated"


def test_our_text_streamer_writes_what_transformers_text_streamer_prints(chat_model, capsys):
    _, ours, _, _ = chat_model
    tok = ours.tokenizer
    ids = torch.tensor([tok.encode("Stop here. The")])
    out = ours.generate(ids, max_new_tokens=30, eos_token_id=None, do_sample=True, generator=torch.Generator().manual_seed(4))
    written = []
    ourstream = TextStreamer(tok, skip_prompt=True, write=written.append)
    theirs = []

    class Collect(transformers.TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            theirs.append(text + ("\n" if stream_end else ""))
    refstream = Collect(tok, skip_prompt=True)
    for streamer in (ourstream, refstream):
        streamer.put(ids)
        for token in out[0, ids.shape[1]:]:
            streamer.put(token[None])
        streamer.end()
    assert written == theirs and len([w for w in written if w]) > 2


def test_text_in_text_out_as_the_readme_shows(chat_model):
    """Two prompts through the checkpoint's tokenizer (left-padded) into generate, like Transformers."""
    ref, ours, _, _ = chat_model
    inputs = ours.tokenizer(["The quick brown fox", "Hello"], return_tensors="pt")
    out = ours.generate(**inputs, max_new_tokens=6, do_sample=True, top_p=0.9, generator=torch.Generator().manual_seed(1))
    texts = ours.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(texts) == 2 and all(texts)
    have, want = ours.generate(**inputs, max_new_tokens=6), ref.generate(**inputs, max_new_tokens=6)
    assert have.tolist() == want.tolist()
