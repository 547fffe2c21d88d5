"""Tiny random Hugging Face checkpoints, written exactly as `save_pretrained` writes them.

Only tests use transformers: it is the reference our numbers are proven against.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, norms around 1, so a wrong mapping cannot hide behind an init value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("norm" in name or ".ln_" in name) and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
    return model.eval()


def save(model, folder: Path, max_shard_size: str | None = None) -> Path:
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


def rewrite_config(folder: Path, edit) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def as_transformers_4x(data: dict) -> None:
    """Turn a 5.x config.json into what Transformers 4.x wrote: rope_theta + rope_scaling, torch_dtype."""
    params = data.pop("rope_parameters", None) or {}
    data["rope_theta"] = params.pop("rope_theta", 10000.0)
    kind = params.pop("rope_type", "default")
    data["rope_scaling"] = None if kind == "default" else {"type": kind, **params}
    data["torch_dtype"] = data.pop("dtype", "float32")
