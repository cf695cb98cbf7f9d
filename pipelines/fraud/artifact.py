"""The fraud pipeline's model format, and loading it without trusting its contents.

Fraud models predate the formats every pipeline reads (:mod:`models.programs`): a
manifest with the preprocessing (:mod:`pipelines.fraud.preprocess`) and the layer
widths of a :class:`~pipelines.fraud.model.FraudMLP`, beside its safetensors
weights. The pipeline declares this format (:data:`FORMAT`, with the smoke batch
of :mod:`pipelines.fraud.smoke`), so the registry and the worker load it as any other.

An artifact is a directory holding ``manifest.json`` (what the model is, how
to feed it, a checksum) and a safetensors weights file. Loading validates the
manifest, verifies the checksum of the weights *before* parsing them, parses
them with safetensors (which cannot execute code, unlike pickle-based
``torch.load``), and requires tensor names and shapes to match the declared
architecture exactly. Every problem is an :class:`ArtifactError` with a
one-line message an operator can act on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from models.artifact import MANIFEST, NAME_PATTERN, VERSION_PATTERN, manifest_json, verified_bytes
from models.errors import ArtifactError, InputMismatch, ModelError
from models.execution import ExecutionOptions, Executor
from models.inputs import NamedInputs
from pipelines.fraud.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, RawFeatures
from pipelines.fraud.model import MAX_HIDDEN_LAYERS, MAX_LAYER_WIDTH, FraudMLP
from pipelines.fraud.preprocess import InputSpec, Preprocessor

__all__ = [
    "WEIGHTS",
    "Architecture",
    "LoadedModel",
    "Manifest",
    "load_artifact",
    "packaged_artifacts_dir",
    "read_manifest",
    "save_artifact",
]

WEIGHTS = "model.safetensors"

MetricValue = float | int | str | bool
#: What a fraud model scores: the pipeline's model inputs, or raw features (training).
Inputs = NamedInputs | Mapping[str, np.ndarray] | RawFeatures


class Architecture(BaseModel):
    """Which module the weights belong to; enough to rebuild it before loading them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["mlp"] = "mlp"
    hidden: tuple[Annotated[int, Field(ge=1, le=MAX_LAYER_WIDTH)], ...] = Field(
        max_length=MAX_HIDDEN_LAYERS
    )


class Manifest(BaseModel):
    """The contents of ``manifest.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    version: str = Field(pattern=VERSION_PATTERN)
    weights: str = Field(description="file name of the weights, inside the artifact directory")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    format: Literal["safetensors"]
    pipeline: Literal["fraud"] | None = None  # the contract's optional field; fraud's models only
    architecture: Architecture
    input_spec: InputSpec
    metrics: dict[str, MetricValue] = Field(default_factory=dict)
    created_by: str = "streamscore train"

    @field_validator("weights")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if (
            not value
            or value in {".", ".."}
            or "/" in value
            or "\\" in value
            or "\0" in value
            or value != os.path.basename(value)
        ):
            raise ValueError("must be a plain file name inside the artifact directory")
        return value

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def packaged_artifacts_dir() -> Path:
    """Where the fraud pipeline's packaged artifacts live (``<name>/<version>/``)."""
    return Path(__file__).resolve().parent / "artifacts"


def save_artifact(
    directory: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    model: FraudMLP,
    spec: InputSpec,
    metrics: dict[str, MetricValue],
) -> Path:
    """Write ``model`` as an artifact into ``directory`` (created; files replaced atomically).

    The same weights always give the same bytes (hence the same checksum), so a
    deterministic training run reproduces its artifact exactly.
    """
    if model.n_inputs != spec.width:
        raise ValueError(f"the model takes {model.n_inputs} inputs but the spec makes {spec.width}")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }
    weights_tmp = path / f".{WEIGHTS}.tmp"
    save_file(tensors, str(weights_tmp))
    weights_tmp.chmod(0o644)  # package data: readable by whichever user runs the worker
    digest = hashlib.sha256(weights_tmp.read_bytes()).hexdigest()
    manifest = Manifest(
        name=name,
        version=version,
        weights=WEIGHTS,
        sha256=digest,
        format="safetensors",
        architecture=Architecture(hidden=model.hidden),
        input_spec=spec,
        metrics=metrics,
    )
    omit = {"pipeline"} if manifest.pipeline is None else None  # no "pipeline": null
    fields = manifest.model_dump(mode="json", exclude=omit)
    text = json.dumps(fields, sort_keys=True, indent=2) + "\n"
    manifest_tmp = path / f".{MANIFEST}.tmp"
    manifest_tmp.write_text(text, encoding="utf-8")
    os.replace(weights_tmp, path / WEIGHTS)
    os.replace(manifest_tmp, path / MANIFEST)
    return path


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """The validated manifest of the artifact in ``directory``."""
    path = Path(directory) / MANIFEST
    data = manifest_json(directory)
    made_for = data.get("pipeline") if isinstance(data, dict) else None
    if made_for is not None and made_for != "fraud":
        raise InputMismatch(
            f"{path}: made for pipeline {made_for!r}; the worker serves the 'fraud' pipeline "
            "(check the model with `streamscore pipeline check`)"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ArtifactError(f"{path}: {_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    """One line naming each bad field of a manifest."""
    parts = []
    for error in exc.errors()[:3]:
        field = ".".join(str(p) for p in error["loc"]) or "(top level)"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"field {field!r}: {message}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts).replace("\n", " ")


def load_artifact(
    directory: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    execution: ExecutionOptions | None = None,
) -> LoadedModel:
    """Load and verify the artifact in ``directory`` onto ``device`` (eval mode).

    ``execution`` says how :meth:`LoadedModel.predict` runs it (precision, compiled
    bucket sizes); a reduced precision is checked against fp32 here.
    """
    path = Path(directory)
    manifest = read_manifest(path)
    weights = path / manifest.weights
    data = verified_bytes(weights, manifest.sha256)
    # Parse the very bytes that were verified (no second read the file could change under).
    try:
        tensors: dict[str, torch.Tensor] = load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error types and ValueError
        raise ArtifactError(f"{weights}: not a valid safetensors file ({exc})") from exc
    module = FraudMLP(manifest.input_spec.width, manifest.architecture.hidden)
    _check_tensors(weights, tensors, module)
    module.load_state_dict(tensors, strict=True)
    module.eval().requires_grad_(False)
    try:
        target = torch.device(device)
        module.to(target)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ModelError(f"cannot use device {str(device)!r} for {manifest.ref}: {exc}") from exc
    executor = Executor(module, target, manifest.input_spec.width, execution)
    try:
        executor.check_precision()
    except ModelError as exc:
        raise ModelError(f"{manifest.ref}: {exc}") from exc
    return LoadedModel(
        name=manifest.name,
        version=manifest.version,
        manifest=manifest,
        device=target,
        preprocessor=Preprocessor(manifest.input_spec),
        module=module,
        path=path,
        executor=executor,
    )


def _check_tensors(weights: Path, tensors: dict[str, torch.Tensor], module: FraudMLP) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(t.shape) for k, t in tensors.items()}
    if set(found) != set(expected):
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        raise ArtifactError(
            f"{weights}: tensors do not match the architecture "
            f"(missing {missing or 'none'}, unexpected {extra or 'none'})"
        )
    for key, shape in expected.items():
        if found[key] != shape:
            raise ArtifactError(
                f"{weights}: tensor {key!r} has shape {list(found[key])}, the architecture "
                f"and input spec need {list(shape)}"
            )
        if tensors[key].dtype != torch.float32:
            raise ArtifactError(f"{weights}: tensor {key!r} is {tensors[key].dtype}, not float32")
        if not bool(torch.isfinite(tensors[key]).all()):
            raise ArtifactError(f"{weights}: tensor {key!r} contains NaN or infinity")


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A verified model ready to score: preprocessing plus module, on one device."""

    name: str
    version: str
    manifest: Manifest
    device: torch.device
    preprocessor: Preprocessor
    module: FraudMLP
    path: Path
    executor: Executor  # runs ``module`` for predict(): precision, buckets, CUDA stream

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def buckets(self) -> tuple[int, ...]:
        """Batch sizes a batch is padded to (none: each batch runs as it comes)."""
        return self.executor.options.buckets

    def describe(self) -> str:
        """How it runs, for the log line of a model loaded."""
        options = self.executor.options
        return (
            f"{options.precision}, compile {options.compile}, largest score difference from "
            f"fp32 {self.executor.precision_error:.2g}"
        )

    def blank(self, size: int) -> NamedInputs:
        """``size`` events with every feature unknown: the warm-up batch."""
        return NamedInputs(
            {
                "numeric": np.full((size, len(NUMERIC_FEATURES)), np.nan, dtype=np.float32),
                "categorical": np.full((size, len(CATEGORICAL_FEATURES)), -1, dtype=np.int64),
            },
            size,
        )

    def matrix(self, inputs: Inputs) -> npt.NDArray[np.float32]:
        """The module's input matrix ``[n, width]`` for the pipeline's model inputs (or for
        raw features with their categorical values as text)."""
        if isinstance(inputs, RawFeatures):
            return self.preprocessor.transform(inputs)
        arrays = inputs.arrays if isinstance(inputs, NamedInputs) else inputs
        return self.preprocessor.transform_coded(arrays["numeric"], arrays["categorical"])

    def prepare(self, inputs: Inputs) -> torch.Tensor:
        """Model input for ``inputs``: a CPU float32 tensor ``[n, width]``."""
        return torch.from_numpy(self.matrix(inputs))

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Fraud probabilities ``[n]`` on ``self.device``; the caller sets threads, grad mode."""
        return torch.sigmoid(self.module(x.to(self.device, torch.float32)))

    def predict(self, inputs: Inputs) -> npt.NDArray[np.float32]:
        """Fraud probabilities for ``inputs`` as float32 numpy ``[n]`` (not checked for NaN)."""
        return self.executor.run(self.matrix(inputs))
