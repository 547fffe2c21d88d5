"""Errors raised while loading configs, checkpoints and artifacts."""
from __future__ import annotations


class CheckpointError(Exception):
    """A checkpoint file or folder cannot be used: corrupt, unsafe, or not fitting the model."""


class ConfigError(Exception):
    """A config.json cannot be read or violates the spec's config rules."""


class ArtifactError(Exception):
    """A compiled artifact directory is missing, incomplete or was not written by this compiler."""


class WeightWarning(UserWarning):
    """A checkpoint tensor was set aside that a param may need (an `ignore:` rule dropped a tensor of the
    shape of a param no rule feeds)."""
