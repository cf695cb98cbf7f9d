"""Errors of the model layer (drawn in the product's tree in ``streams/errors.py``)."""

from __future__ import annotations


class ModelError(Exception):
    """A model could not be loaded or used."""


class ArtifactError(ModelError):
    """A model artifact is incomplete, corrupt or unsafe. Re-train or re-copy it."""


class InputMismatch(ArtifactError):
    """The model was made for another pipeline, or takes other inputs than its features give."""


class InferenceError(ModelError):
    """A model call failed for a batch (raised, or returned non-finite or mis-shaped output)."""
