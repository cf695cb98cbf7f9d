"""A model format a pipeline brings with it, beside the two every pipeline reads.

Every pipeline's models can be ``torch.export`` programs or safetensors weights
of a declared architecture (:mod:`models.programs`). A pipeline whose models
predate those, or need their own preprocessing stored beside the weights,
declares a :class:`ModelFormat`: how its manifest is read, how an artifact is
loaded onto a device, and what else a model must pass before it enters the
registry. The registry, rollouts and the worker use it for every manifest that
does not name its ``inputs`` (one that does is a program, read as for any
pipeline); nothing else about the pipeline changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the declaration of a pipeline imports this without loading torch
    import torch

    from models.execution import ExecutionOptions

__all__ = ["ArtifactManifest", "ModelFormat"]


class ArtifactManifest(Protocol):
    """What the registry reads of any manifest (compared whole to spot a changed artifact)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def weights(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def ref(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ModelFormat:
    """``read``: the validated manifest of an artifact directory (an ``ArtifactError``, or an
    ``InputMismatch`` for a model made for another pipeline, saying why not); ``load``: the
    artifact on a device, run as the execution options say (the scoring model the worker
    calls with the pipeline's model inputs); ``vet``: further checks of a loaded model
    before ``models add`` takes it (raise ``ArtifactError``)."""

    read: Callable[[Path], ArtifactManifest]
    load: Callable[[Path, torch.device, ExecutionOptions | None], Any]
    vet: Callable[[Any], None] | None = None
