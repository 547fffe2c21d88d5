"""Mixture-of-experts helpers for the parity tests: a checkpoint in Transformers 5.x's stacked
in-memory layout, the rows a reference router sends to each expert, and the rows each of our
experts computed."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import save_file


def save_stacked(ref, folder: Path, out: Path, expect: str) -> Path:
    """ref's state_dict as it is in memory (experts stacked: `experts.gate_up_proj` [E, 2I, H]) next
    to folder's config.json; `expect` is a name the stacked layout must contain (a check that
    save_pretrained's per-expert layout is not what was written)."""
    out.mkdir(parents=True)
    tensors = {k: v.detach().contiguous() for k, v in ref.state_dict().items()}
    if ref.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    assert any(expect in name for name in tensors), sorted(tensors)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(folder / "config.json", out / "config.json")
    return out


def routed_rows(ref, x, router) -> list[Counter]:
    """Per layer of ref: how many (token, pick) rows its router sends to each expert for input x."""
    picks = []
    hooks = [router(layer).register_forward_hook(lambda m, args, out: picks.append(Counter(out[2].flatten().tolist())))
             for layer in ref.model.layers]
    try:
        with torch.no_grad():
            ref(x)
    finally:
        for h in hooks:
            h.remove()
    return picks


def expert_rows(ours, x) -> list[Counter]:
    """Per layer of our model: the rows each expert computed (summed over its grouped linears) for x."""
    layers = []
    for layer in ours.net.layers:
        grouped = [m for m in layer.modules() if hasattr(m, "expert_rows")]
        for m in grouped:
            m.expert_rows.clear()
        layers.append(grouped)
    ours(x)
    return [sum((m.expert_rows for m in grouped), Counter()) for grouped in layers]
