"""graphspec's compiler: YAML spec -> validated Spec -> IR -> passes -> emitted artifact."""
__version__ = "0.1.0"
