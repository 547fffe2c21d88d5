"""A spec extending the shipped Llama, written beside a copy of it (a bare `extends: llama` is looked
up next to the child)."""
from __future__ import annotations

import shutil
from pathlib import Path


def llama_child(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy("specs/llama.yaml", folder / "llama.yaml")
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path
