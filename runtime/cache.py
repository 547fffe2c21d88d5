"""The user's graphspec cache directory: compiled artifacts, built native kernels."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The user's own cache directory (never a shared /tmp path), created private."""
    base = os.environ.get("GRAPHSPEC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "graphspec")
    root = Path(base)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root
