"""graphspec's runtime: load compiled artifacts and Hugging Face checkpoints, run and generate.

The names below load on first use (PEP 562): the compiler imports the runtime's pure-Python parts
(the expression language, weight-rule templates) and must not pay for importing torch.
"""
from runtime.errors import ArtifactError, CheckpointError, ConfigError, GenerationError

__version__ = "0.1.0"   # graphspec's, shared with the compiler (an artifact records the one that wrote it)

_LAZY = {"load": "runtime.loader", "from_pretrained": "runtime.pretrained", "init_random": "runtime.loader",
         "from_config": "runtime.pretrained",
         "save_pretrained": "runtime.save", "CompiledModel": "runtime.model", "ModelOutput": "runtime.model",
         "GenerationConfig": "runtime.generation.config", "load_tokenizer": "runtime.generation.tokenizer"}

__all__ = [*_LAZY, "CheckpointError", "ConfigError", "ArtifactError", "GenerationError"]


def __getattr__(name: str):
    import importlib
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    try:      # a submodule reached as an attribute (runtime.loader) before anything imported it
        return importlib.import_module(f"runtime.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"runtime.{name}":
            raise
        raise AttributeError(f"module 'runtime' has no attribute {name!r}") from None
