"""Models of a declared pipeline: a ``torch.export`` program or safetensors weights with a
declared architecture, loaded from verified bytes without unpickling anything.

The manifest names the ``pipeline`` the model was made for, its ``format`` and
its ``inputs`` (dtype and shape per named input, batch first). The model is
called with the inputs as positional arguments, in the order the pipeline
declares them (the manifest's JSON order does not matter). Loading checks,
in order: the manifest, the checksum of the file (before parsing it), that the
file holds nothing pickled, and that the inputs are exactly those the
pipeline's features produce; then a batch of zeros must give one finite score
in [0, 1] per event. Any failure is an :class:`ArtifactError` saying which.

``torch.export.load`` would unpickle some payloads (tensors flagged
``use_pickle``, opaque and custom objects, and its sample inputs when they are
not plain tensors), so an archive is read here first: it is refused if its
weight or constant configs ask for any pickle, and its sample inputs must load
with ``weights_only=True``, which leaves ``torch.export.load`` nothing to unpickle.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from models.artifact import manifest_json, verified_bytes
from models.errors import ArtifactError, InferenceError, InputMismatch
from models.inputs import NamedInputs

__all__ = [
    "InputSpecEntry",
    "LoadedProgram",
    "ProgramManifest",
    "load_program",
    "read_program_manifest",
    "save_program",
]

MANIFEST = "manifest.json"
_DTYPES = {"float32", "float64", "int64", "int32", "bool"}


class InputSpecEntry(BaseModel):
    """One named input: dtype and shape, batch dimension first (``null``: any size)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dtype: str
    shape: tuple[int | None, ...]

    @field_validator("dtype")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in _DTYPES:
            raise ValueError(f"must be one of {sorted(_DTYPES)}")
        return value


class ArchitectureRef(BaseModel):
    """The class (exposed by the pipeline) that the safetensors weights belong to."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    class_name: str = Field(alias="class", min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)


class ProgramManifest(BaseModel):
    """``manifest.json`` of a pipeline model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    pipeline: str = Field(min_length=1)
    format: Literal["torch.export", "safetensors"]
    weights: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs: dict[str, InputSpecEntry]
    architecture: ArchitectureRef | None = None
    metrics: dict[str, float | int | str | bool] = Field(default_factory=dict)
    created_by: str = "streamscore"

    @field_validator("weights")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if not value or value in {".", ".."} or value != os.path.basename(value) or "\\" in value:
            raise ValueError("must be a plain file name inside the artifact directory")
        return value

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def read_program_manifest(directory: Path) -> ProgramManifest:
    path = Path(directory) / MANIFEST
    data = manifest_json(directory)
    if isinstance(data, dict) and "pipeline" not in data:
        raise InputMismatch(
            f"{path}: names no 'pipeline' it was made for; this pipeline's models are "
            "torch.export programs or safetensors made for it (a model of another format?)"
        )
    try:
        manifest = ProgramManifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ArtifactError(f"{path}: field {where!r}: {first['msg']}") from exc
    if manifest.format == "safetensors" and manifest.architecture is None:
        raise ArtifactError(f"{path}: a safetensors model must name its architecture")
    return manifest


@dataclass(frozen=True, slots=True)
class LoadedProgram:
    """A verified pipeline model on one device; called with the named inputs."""

    manifest: ProgramManifest
    module: torch.nn.Module
    device: torch.device
    path: Path
    order: tuple[str, ...]  # the inputs, positionally, in the order the pipeline declares them

    @property
    def ref(self) -> str:
        return self.manifest.ref

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    #: Batch sizes a batch is padded to (none: a program runs each batch as it comes).
    buckets: ClassVar[tuple[int, ...]] = ()

    def describe(self) -> str:
        """How it runs, for the log line of a model loaded."""
        return f"{self.manifest.format}, {len(self.order)} inputs"

    def blank(self, size: int) -> NamedInputs:
        """``size`` events of zeros: the warm-up batch."""
        return NamedInputs(
            {
                name: np.zeros(
                    (size, *[d if d is not None else 1 for d in spec.shape[1:]]),
                    dtype=np.dtype(spec.dtype),
                )
                for name, spec in self.manifest.inputs.items()
            },
            size,
        )

    def predict(self, inputs: NamedInputs | Mapping[str, np.ndarray]) -> npt.NDArray[np.float32]:
        """One score per event, float32 on the CPU (checked: one per row)."""
        if isinstance(inputs, NamedInputs):
            n, inputs = inputs.n, inputs.arrays
        else:
            n = len(next(iter(inputs.values())))
        tensors = [
            torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self.device)
            for name in self.order
        ]
        with torch.inference_mode():
            try:
                out = self.module(*tensors)
            except Exception as exc:
                raise InferenceError(f"{self.ref} raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, torch.Tensor) or out.reshape(-1).shape[0] != n:
            raise InferenceError(f"{self.ref}: returned no tensor of one score per event")
        scores = out.detach().reshape(-1).to("cpu", torch.float32).numpy()
        return scores


def save_program(
    directory: Path,
    *,
    name: str,
    version: str,
    pipeline: str,
    inputs: Mapping[str, Mapping[str, object]],
    model: torch.nn.Module,
    example: tuple[torch.Tensor, ...] | None = None,
    architecture: tuple[str, Mapping[str, Any]] | None = None,
    metrics: Mapping[str, float | int | str | bool] | None = None,
) -> Path:
    """Write ``model`` as an artifact: a ``torch.export`` program when ``example`` inputs are
    given (the batch dimension exported as dynamic), else safetensors weights of
    ``architecture`` (class name, constructor arguments)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if example is not None:
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(
            model, example, dynamic_shapes=tuple({0: batch} for _ in example)
        )
        weights, fmt = "model.pt2", "torch.export"
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        data = buffer.getvalue()
        arch = None
    else:
        if architecture is None:
            raise ValueError("a safetensors artifact needs its architecture")
        weights, fmt = "model.safetensors", "safetensors"
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        tmp = path / ".weights.tmp"
        save_file(tensors, str(tmp))
        data = tmp.read_bytes()
        tmp.unlink()
        arch = {"class": architecture[0], "args": dict(architecture[1])}
    (path / weights).write_bytes(data)
    manifest = {
        "name": name,
        "version": version,
        "pipeline": pipeline,
        "format": fmt,
        "weights": weights,
        "sha256": hashlib.sha256(data).hexdigest(),
        "inputs": {k: dict(v) for k, v in inputs.items()},
        "architecture": arch,
        "metrics": dict(metrics or {}),
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def load_program(
    directory: Path,
    *,
    pipeline: str,
    inputs: Mapping[str, Mapping[str, object]],
    architectures: Mapping[str, type[Any]],
    device: str | torch.device = "cpu",
) -> LoadedProgram:
    """Load, verify and smoke-test the artifact in ``directory`` for ``pipeline``."""
    path = Path(directory)
    manifest = read_program_manifest(path)
    if manifest.pipeline != pipeline:
        raise InputMismatch(
            f"{manifest.ref} was made for pipeline {manifest.pipeline!r}, not {pipeline!r}"
        )
    declared = {k: InputSpecEntry.model_validate(v) for k, v in inputs.items()}
    if manifest.inputs != declared:
        raise InputMismatch(f"{manifest.ref}: {_input_mismatch(manifest.inputs, declared)}")
    weights = path / manifest.weights
    data = verified_bytes(weights, manifest.sha256)
    if manifest.format == "torch.export":
        module = _exported(weights, data)
    else:
        module = _from_safetensors(weights, data, manifest, architectures)
    target = torch.device(device)
    module = module.to(target)
    loaded = LoadedProgram(manifest, module, target, path, tuple(inputs))
    _smoke(loaded)
    return loaded


def _input_mismatch(
    found: Mapping[str, InputSpecEntry], wanted: Mapping[str, InputSpecEntry]
) -> str:
    missing = sorted(set(wanted) - set(found))
    extra = sorted(set(found) - set(wanted))
    if missing or extra:
        return (
            f"its inputs are {sorted(found)}, the pipeline's features produce {sorted(wanted)} "
            f"(missing {missing or 'none'}, unexpected {extra or 'none'})"
        )
    for name, spec in wanted.items():
        if found[name] != spec:
            return (
                f"input {name!r} is {found[name].dtype} {list(found[name].shape)}, the "
                f"pipeline's features produce {spec.dtype} {list(spec.shape)}"
            )
    return "inputs differ"


def _exported(weights: Path, data: bytes) -> torch.nn.Module:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"{weights}: not a torch.export archive ({exc})") from exc
    if not any(n.endswith("/archive_format") for n in names):
        raise ArtifactError(f"{weights}: not a torch.export archive of this format; re-export it")
    for name in names:
        if name.endswith("_config.json") and "/data/" in name:
            config = json.loads(archive.read(name)).get("config", {})
            for key, entry in config.items():
                if entry.get("use_pickle") or not str(entry.get("path_name", "")).startswith(
                    ("weight_", "tensor_")
                ):
                    raise ArtifactError(
                        f"{weights}: {key!r} is stored pickled or as an object; only tensors "
                        "are loaded (export the model with plain tensor weights)"
                    )
        elif name.endswith(".pt"):
            try:
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception as exc:
                raise ArtifactError(
                    f"{weights}: {name} holds more than tensors; refused ({exc})"
                ) from exc
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise ArtifactError(f"{weights}: torch.export cannot load it ({exc})") from exc
    module: torch.nn.Module = program.module()
    return module


def _from_safetensors(
    weights: Path,
    data: bytes,
    manifest: ProgramManifest,
    architectures: Mapping[str, type[Any]],
) -> torch.nn.Module:
    assert manifest.architecture is not None
    name = manifest.architecture.class_name
    cls = architectures.get(name)
    if cls is None:
        raise ArtifactError(
            f"{manifest.ref}: architecture {name!r} is not one the pipeline declares "
            f"({', '.join(sorted(architectures)) or 'none'})"
        )
    try:
        module = cls(**manifest.architecture.args)
    except Exception as exc:
        raise ArtifactError(f"{manifest.ref}: {name}(**args) raised {exc}") from exc
    try:
        tensors = load_safetensors(data)
    except Exception as exc:
        raise ArtifactError(f"{weights}: not a valid safetensors file ({exc})") from exc
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{weights}: does not fit {name}: {exc}") from exc
    ready: torch.nn.Module = module.eval().requires_grad_(False)
    return ready


def _smoke(loaded: LoadedProgram) -> None:
    """Eight events of zeros must give eight finite scores in [0, 1]."""
    try:
        scores = loaded.predict(loaded.blank(8))
    except InferenceError as exc:
        raise ArtifactError(f"smoke batch: {exc}") from exc
    if scores.shape != (8,) or not np.isfinite(scores).all():
        raise ArtifactError(f"{loaded.ref}: the smoke batch gave non-finite scores")
    if (scores < 0).any() or (scores > 1).any():
        raise ArtifactError(
            f"{loaded.ref}: scores must be probabilities in [0, 1] (end the model with a sigmoid)"
        )
