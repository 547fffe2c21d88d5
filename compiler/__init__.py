"""graphspec's compiler: YAML spec -> validated Spec -> IR -> passes -> emitted artifact."""
from runtime import __version__

__all__ = ["__version__"]
