"""Tiny random Llama, GPT-2 and T5 checkpoints for the generation tests, with their Transformers twins
loaded back from the folder (so both read the same generation_config.json), and helpers to compare
`generate` calls under the same torch seed."""
from __future__ import annotations

from pathlib import Path

import torch

import runtime
from tests.hf_checkpoints import randomize, save

LLAMA = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
GPT2 = dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
# Transformers 5.24 sizes T5's generation cache by num_layers: decoder and encoder have equal depth
T5 = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
          relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0,
          pad_token_id=0, eos_token_id=1, feed_forward_proj="relu")


def make(family: str, folder: Path, seed: int = 0, head_scale: float = 1.0, **overrides):
    """(Transformers model, our model) of one random checkpoint written to `folder`. `head_scale`
    widens the logits (a flat next-token distribution would hide sampling mistakes); T5's weights
    are scaled up so greedy decoding does not settle on one token."""
    import transformers
    if family == "llama":
        config_cls, model_cls, base = transformers.LlamaConfig, transformers.LlamaForCausalLM, LLAMA
    elif family == "gpt2":
        config_cls, model_cls, base = transformers.GPT2Config, transformers.GPT2LMHeadModel, GPT2
    else:
        config_cls, model_cls, base = transformers.T5Config, transformers.T5ForConditionalGeneration, T5
    model = randomize(model_cls(config_cls(**{**base, **overrides})), seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if family == "t5" and "layer_norm" not in name:
                p.mul_(6.0)
        head = model.get_output_embeddings().weight
        head.mul_(head_scale)
    save(model, folder)
    ref = model_cls.from_pretrained(folder).eval()
    return ref, runtime.from_pretrained(folder)


def prompt(vocab: int, batch: int = 2, length: int = 7, seed: int = 1, pad: int = 0):
    """(ids, mask): random ids clear of the special ids, row 0 left-padded by `pad` tokens of id 0."""
    ids = torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    ids[mask == 0] = 0
    return ids, mask


def both(ref, ours, ids, seed: int = 0, **kwargs):
    """(ours, Transformers') generate outputs for the same call, each after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    have = ours.generate(ids, **kwargs)
    torch.manual_seed(seed)
    with torch.no_grad():
        want = ref.generate(ids, **kwargs)
    return have, want


def an_emitted_token(ours, ids, mask=None, position: int = 3, row: int = 0, **kwargs) -> int:
    """A token greedy decoding produces: as the end token it makes rows finish at different steps."""
    out = ours.generate(ids, attention_mask=mask, max_new_tokens=position + 1, eos_token_id=None, **kwargs)
    return int(out[row, -1])
