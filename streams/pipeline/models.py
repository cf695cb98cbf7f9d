"""A pipeline's models: their manifests read, loaded and vetted in the pipeline's format.

The one place that knows a pipeline may bring its own :class:`~models.formats.ModelFormat`.
Every pipeline's models can be :mod:`models.programs` artifacts made for it (a manifest
naming its ``inputs``); a pipeline with a format of its own reads every other manifest
in that format. The worker, ``models add``, ``pipeline check`` and the bench all load
through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.artifact import manifest_json
from models.errors import ArtifactError
from models.execution import ExecutionOptions
from models.formats import ArtifactManifest
from models.programs import load_program, read_program_manifest
from models.registry import Registered, register_artifact
from streams.pipeline.declare import Pipeline

__all__ = ["add_model", "load_model", "read_model_manifest", "register_model", "vet_model"]


def _own_format(pipeline: Pipeline, directory: Path) -> bool:
    """Whether the artifact in ``directory`` is in the pipeline's own format (not a program:
    a program's manifest names its inputs)."""
    if pipeline.model_format is None:
        return False
    try:
        data = manifest_json(directory)
    except ArtifactError:
        return True  # unreadable: the pipeline's own format says why
    return not (isinstance(data, dict) and "inputs" in data)


def read_model_manifest(pipeline: Pipeline, directory: Path) -> ArtifactManifest:
    """The validated manifest of the artifact in ``directory``, read as ``pipeline`` reads it."""
    if _own_format(pipeline, directory):
        assert pipeline.model_format is not None
        return pipeline.model_format.read(Path(directory))
    return read_program_manifest(Path(directory))


def load_model(
    pipeline: Pipeline,
    directory: Path,
    device: str | torch.device = "cpu",
    execution: ExecutionOptions | None = None,
) -> Any:
    """The model in ``directory``, checked against ``pipeline`` (made for it, taking exactly
    the inputs its features produce) and loaded onto ``device``."""
    target = torch.device(device)
    if _own_format(pipeline, directory):
        assert pipeline.model_format is not None
        return pipeline.model_format.load(Path(directory), target, execution)
    return load_program(
        Path(directory),
        pipeline=pipeline.name,
        inputs=pipeline.describe_inputs(),
        architectures=pipeline.architectures,
        device=target,
    )


def vet_model(pipeline: Pipeline, directory: Path) -> ArtifactManifest:
    """Load the model on the CPU and run every check ``models add`` asks of it; its manifest."""
    model = load_model(pipeline, directory)
    own = pipeline.model_format
    if own is not None and own.vet is not None and _own_format(pipeline, directory):
        own.vet(model)
    manifest: ArtifactManifest = model.manifest
    return manifest


def register_model(pipeline: Pipeline, source: Path, registry: Path) -> Registered:
    """``models add``: vet the artifact in ``source`` for ``pipeline`` and copy it into the
    registry (:func:`models.registry.register_artifact` says what is refused)."""
    return register_artifact(
        Path(source),
        Path(registry),
        lambda directory: read_model_manifest(pipeline, directory),
        lambda directory: vet_model(pipeline, directory),
    )


def add_model(pipeline: Pipeline, source: Path, registry: Path) -> str:
    """:func:`register_model`, giving the ``NAME:VERSION`` added."""
    return register_model(pipeline, source, registry).ref
