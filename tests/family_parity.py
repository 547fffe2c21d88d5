"""The parity checks every decoder family runs against its Transformers class.

A family's test gives a config class, a model class and tiny configs; these helpers write the random
checkpoint with save_pretrained, load it with `runtime.from_pretrained` (so the spec is also picked
by its `matches`), and compare logits, padded batches and greedy generation.
"""
from __future__ import annotations

from pathlib import Path

import torch

import runtime
from tests.hf_checkpoints import randomize, save

TOL = 1e-4


class Family:
    def __init__(self, spec: str, config_cls, model_cls, base: dict):
        self.spec, self.config_cls, self.model_cls, self.base = spec, config_cls, model_cls, base

    def make(self, folder: Path, overrides: dict, seed: int = 0, adjust=None):
        """(reference model, checkpoint folder, our model loaded from it)."""
        config = self.config_cls(**{**self.base, **overrides})
        ref = randomize(self.model_cls(config), seed)
        if adjust is not None:
            adjust(ref)
        save(ref, folder)
        ours = runtime.from_pretrained(folder)
        assert ours.spec.name == self.spec, f"from_pretrained picked spec '{ours.spec.name}', not '{self.spec}'"
        return ref, folder, ours

    def ids(self, batch=2, length=11, seed=0):
        return random_ids(self.base["vocab_size"], batch, length, seed)


def random_ids(vocab: int, batch=2, length=11, seed=0) -> torch.Tensor:
    """Token ids in [3, vocab): clear of the special ids (pad 0, bos 1, eos 2) the tests configure."""
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def max_logit_diff(ref, ours, x, **kwargs) -> float:
    with torch.no_grad():
        expected = ref(x, **kwargs).logits
    got = ours(x, **kwargs).logits
    assert got.shape == expected.shape
    return (got - expected).abs().max().item()


def assert_greedy_tokens_match(ref, ours, prompt, new_tokens=20):
    want = ref.generate(prompt, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    have = ours.generate(prompt, max_new_tokens=new_tokens, eos_token_id=None)
    assert have.tolist() == want.tolist()


def assert_left_padded_batch_matches(ref, ours, x, pad=3, new_tokens=20):
    """Row 0 left-padded: its logits equal the unpadded row's and Transformers' (with the same
    positions), and batched greedy generation equals Transformers' and the row generated alone."""
    x = x.clone()
    x[0, :pad] = 0
    mask = torch.ones_like(x)
    mask[0, :pad] = 0
    batched = ours(x, attention_mask=mask).logits
    alone = ours(x[:1, pad:]).logits
    assert (batched[:1, pad:] - alone).abs().max().item() <= TOL
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = ref(x, attention_mask=mask, position_ids=positions).logits
    assert (batched[:1, pad:] - expected[:1, pad:]).abs().max().item() <= TOL
    assert (batched[1:] - expected[1:]).abs().max().item() <= TOL
    want = ref.generate(x, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                        pad_token_id=0)
    have = ours.generate(x, attention_mask=mask, max_new_tokens=new_tokens, eos_token_id=None)
    assert have.tolist() == want.tolist()
    assert have[0, pad:].tolist() == ours.generate(x[:1, pad:], max_new_tokens=new_tokens, eos_token_id=None)[0].tolist()


def assert_padded_rows_match(ref, ours, x, pad: int, side: str) -> None:
    """Row 1 padded on `side` by `pad` tokens: every real token's logits equal Transformers' given
    the same positions (Transformers' plain forward does not derive them from the mask)."""
    mask = torch.ones_like(x)
    if side == "left":
        mask[1, :pad] = 0
    else:
        mask[1, -pad:] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = ref(x, attention_mask=mask, position_ids=positions).logits
    got = ours(x, attention_mask=mask).logits
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= TOL


def assert_left_padded_generation_matches(ref, ours, x, pad: int = 3, new_tokens: int = 20) -> None:
    """Row 0 left-padded by `pad` tokens: batched greedy generation equals Transformers'."""
    mask = torch.ones_like(x)
    mask[0, :pad] = 0
    x[0, :pad] = 0
    want = ref.generate(x, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                        pad_token_id=0)
    have = ours.generate(x, attention_mask=mask, max_new_tokens=new_tokens, eos_token_id=None)
    assert have.tolist() == want.tolist()


def assert_cached_generation_matches_uncached(ours, x, mask, new_tokens: int = 10) -> torch.Tensor:
    """Greedy generation through the KV cache picks, at every step, the token a full forward pass over
    the prompt and the tokens so far picks (nothing cached). Returns the generated rows."""
    out = ours.generate(x, attention_mask=mask, max_new_tokens=new_tokens, eos_token_id=None)
    full_mask = torch.cat([mask, torch.ones(x.shape[0], new_tokens, dtype=mask.dtype)], dim=1)
    for step in range(new_tokens):
        n = x.shape[1] + step
        uncached = ours(out[:, :n], attention_mask=full_mask[:, :n]).logits[:, -1]
        assert out[:, n].tolist() == uncached.argmax(-1).tolist(), f"step {step}"
    return out
