"""graphspec's runtime: load compiled artifacts and Hugging Face checkpoints, run and generate.

The names below load on first use (PEP 562): the compiler imports the runtime's pure-Python parts
(the expression language, weight-rule templates) and must not pay for importing torch.
"""
from runtime.errors import ArtifactError, CheckpointError, ConfigError, GenerationError

_LAZY = {"load": "runtime.loader", "from_pretrained": "runtime.loader", "init_random": "runtime.loader",
         "save_pretrained": "runtime.save", "CompiledModel": "runtime.model", "ModelOutput": "runtime.model",
         "GenerationConfig": "runtime.generation.config", "load_tokenizer": "runtime.generation.tokenizer"}

__all__ = [*_LAZY, "CheckpointError", "ConfigError", "ArtifactError", "GenerationError"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_LAZY[name]), name)
