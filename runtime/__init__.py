"""graphspec's runtime: load compiled artifacts and Hugging Face checkpoints, run and generate."""
from runtime.errors import ArtifactError, CheckpointError, ConfigError
from runtime.loader import from_pretrained, init_random, load
from runtime.save import save_pretrained
from runtime.model import CompiledModel, ModelOutput

__all__ = ["load", "from_pretrained", "init_random", "save_pretrained", "CompiledModel", "ModelOutput", "CheckpointError", "ConfigError", "ArtifactError"]
