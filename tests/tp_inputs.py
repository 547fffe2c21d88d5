"""The inputs the tensor-parallel tests feed every model, in the parent (the single-process reference)
and in each rank (tests/tp_worker.py) alike: a padded batch's logits and its greedy tokens."""
from __future__ import annotations

import torch


def run_model(model, kind: str, forward_only: bool = False) -> dict:
    vocab = model.config["vocab_size"]
    ids = torch.randint(3, vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if kind == "decoder":
        ids[0, :2], mask[0, :2] = 0, 0               # left padding, as generation batches are
        out = {"logits": model(ids, attention_mask=mask).logits}
        if not forward_only:
            out["tokens"] = model.generate(ids, attention_mask=mask, max_new_tokens=8).tolist()
        return out
    mask[1, -3:] = 0                                 # a shorter source
    out = {"logits": model(ids, attention_mask=mask, decoder_input_ids=ids[:, :5]).logits}
    if not forward_only:
        out["tokens"] = model.generate(ids, attention_mask=mask, max_new_tokens=8).tolist()
    return out
