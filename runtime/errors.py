"""Errors raised while loading configs, checkpoints and artifacts."""
from __future__ import annotations


class CheckpointError(Exception):
    """A checkpoint file or folder cannot be used: corrupt, unsafe, or not fitting the model."""


class ConfigError(Exception):
    """A config.json cannot be read or violates the spec's config rules."""


class ArtifactError(Exception):
    """A compiled artifact directory is missing, incomplete or was not written by this compiler."""


class InputError(TypeError, ValueError):
    """An argument of a forward or generate call that cannot be used: a tensor of the wrong dtype or
    shape, ids outside the tables they index, an empty batch. The message names the argument and what
    was expected. Both a TypeError and a ValueError, the two that torch and Transformers raise for these."""


class GenerationError(ValueError):
    """A generation setting (an argument of generate, a generation_config.json value) that cannot be used."""


class WeightWarning(UserWarning):
    """A checkpoint tensor was set aside that a param may need (an `ignore:` rule dropped a tensor of the
    shape of a param no rule feeds)."""
