"""Errors of a pipeline declaration: each says what to change, and the commands exit 2."""

from __future__ import annotations

from streams.errors import ConfigError

__all__ = ["PipelineError"]


class PipelineError(ConfigError):
    """The pipeline cannot be used as declared (or cannot be found); the message says why."""
