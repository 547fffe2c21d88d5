"""Small tokenizers trained here (no download) in the three shapes stop strings distinguish — GPT-2's
byte-level BPE, a SentencePiece-like Metaspace BPE, and the same with byte-fallback tokens (Llama's)
— and a tiny Llama checkpoint folder that carries one with its tokenizer_config.json."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tests.hf_checkpoints import randomize, save

CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world! How are you today?",
          "graphspec compiles YAML specs into PyTorch models.", "Stop here. The end.\nA new line starts.",
          "日本語のテキストも少し。", "Numbers 12345 and symbols #@! [done]"] * 30
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system=false) %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role') }}{% endif %}"
    "{% if message['role'] == 'system' %}{% set ns.system = true %}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}{% endgeneration %}"
    "{% else %}{{ message['content'] }}{% endif %}{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if tools %}{{ tools | tojson }}{% endif %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def byte_level(vocab_size: int = 320) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def metaspace(vocab_size: int = 200, byte_fallback: bool = False) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
    steps = [decoders.Metaspace()]
    if byte_fallback:
        # Llama's layout: the 256 byte tokens first, then the pieces; unknown characters become bytes
        trained = json.loads(tok.to_str())["model"]
        pieces = sorted(trained["vocab"], key=trained["vocab"].get)
        names = [*SPECIALS, *[f"<0x{b:02X}>" for b in range(256)], *[p for p in pieces if p not in SPECIALS]]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
        tok = Tokenizer(models.BPE(vocab={n: i for i, n in enumerate(names)}, merges=merges, byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.add_special_tokens(SPECIALS)
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    tok.decoder = decoders.Sequence(steps)
    return tok


def added_token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "rstrip": False, "normalized": False,
            "single_word": False, "special": True}


def write_tokenizer(folder: Path, tok: Tokenizer, chat_template: str | None = CHAT_TEMPLATE, **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    data = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
            "eos_token": added_token("<|im_end|>"), **config}
    if chat_template is not None:
        data["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(data))
    return folder


def llama_with_tokenizer(folder: Path, tok: Tokenizer, seed: int = 0, head_scale: float = 4.0, **config):
    """(Transformers model, folder): a tiny Llama over the tokenizer's vocabulary; its end token is
    the tokenizer's eos (<|im_end|>)."""
    import transformers
    eos = tok.token_to_id("<|im_end|>")
    cfg = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   bos_token_id=tok.token_to_id("<|endoftext|>"), eos_token_id=eos)
    model = randomize(transformers.LlamaForCausalLM(cfg), seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    save(model, folder)
    write_tokenizer(folder, tok, **config)
    return model, folder
