"""The declaration a team writes: :class:`Pipeline`, the :class:`Batch` its features read,
the :class:`Tensor` specs of its model's inputs.

A pipeline is a value, checked when it is made, so a mistake is a
:class:`~streams.pipeline.errors.PipelineError` naming the field to change, at
import time, in the notebook, long before a worker joins a group.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from models.formats import ModelFormat
from streams.pipeline.errors import PipelineError
from streams.pipeline.events import Column, EventSchema
from streams.pipeline.state import Aggregate, StateLayout, Window

__all__ = ["Batch", "FeatureFunction", "Pipeline", "Tensor", "Traffic"]

Dtype = Literal["float32", "float64", "int64", "int32", "bool"]
_DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "bool": np.bool_,
}
_NAME = r"^[a-z0-9][a-z0-9_-]*$"


@dataclass(frozen=True, slots=True)
class Tensor:
    """One named model input: its dtype and its shape per event (the batch dimension
    comes first and is left out here). ``finite=False``: NaN and infinities are values
    the model handles itself (it imputes them), not a reason to refuse the event."""

    dtype: Dtype = "float32"
    shape: tuple[int, ...] = ()
    finite: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise PipelineError(f"Tensor dtype {self.dtype!r} is not one of {', '.join(_DTYPES)}")
        shape = tuple(self.shape)
        if not all(isinstance(d, int) and d >= 1 for d in shape):
            raise PipelineError(f"Tensor shape {self.shape!r}: each dimension is a positive int")
        object.__setattr__(self, "shape", shape)

    @property
    def numpy_dtype(self) -> np.dtype[np.generic]:
        return np.dtype(_DTYPES[self.dtype])

    def as_manifest(self) -> dict[str, object]:
        """The manifest's form: batch dimension first, ``null`` for any size."""
        return {"dtype": self.dtype, "shape": [None, *self.shape]}


@dataclass(frozen=True, slots=True)
class Batch:
    """What a feature function reads: a chunk of events as columns, each with its state.

    Every array has one row per event, in the chunk's order. ``state`` holds each
    declared aggregate as it was just before the event; ``window`` the entity's
    last events before it (``(n, size, fields)``, most recent last, zero-padded
    at the front) and ``length`` how many of those are real. ``unknown`` marks the
    events whose entity's stored state could not be read or decoded: their state
    is walked from empty (the event is scored, degraded), and a feature function
    may rather treat it as unknown (NaN for a model that imputes).
    """

    columns: Mapping[str, Column]
    time: npt.NDArray[np.float64]
    state: Mapping[str, npt.NDArray[np.float64]]
    window: npt.NDArray[np.float64] | None
    length: npt.NDArray[np.int64] | None
    profile: Mapping[str, npt.NDArray[np.float64]]
    unknown: npt.NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return len(self.time)

    def rows(self, start: int, stop: int) -> Batch:
        """Events ``start`` to ``stop`` only (to find the events a feature function fails on)."""
        cut = slice(start, stop)
        return Batch(
            {k: v[cut] for k, v in self.columns.items()},
            self.time[cut],
            {k: v[cut] for k, v in self.state.items()},
            None if self.window is None else self.window[cut],
            None if self.length is None else self.length[cut],
            {k: v[cut] for k, v in self.profile.items()},
            None if self.unknown is None else self.unknown[cut],
        )

    def __getitem__(self, name: str) -> Column:
        """An event field, an aggregate or a profile feature, by name (in that order)."""
        for source in (self.columns, self.state, self.profile):
            if name in source:
                return source[name]
        raise KeyError(f"{name!r} is not an event field, a state or a profile feature")


FeatureFunction = Callable[[Batch], Mapping[str, npt.ArrayLike]]


class Traffic(Protocol):
    """A pipeline's synthetic traffic, for ``streamscore demo`` and ``streamscore produce``:
    a world of entities whose events go on for as long as they are asked for."""

    def profiles(self) -> Sequence[tuple[bytes, bytes]]:
        """Records (key, JSON value) for the features topic, published before the events."""
        ...

    def events(self, n: int) -> Sequence[tuple[bytes, bytes]]:
        """The next ``n`` events, in the order to publish them: (key, JSON value)."""
        ...

    def malformed(self, n: int, seed: int) -> Sequence[bytes]:
        """``n`` values that must each become a dead letter (varied kinds, from ``seed``)."""
        ...


@dataclass(frozen=True)
class Pipeline:
    """Everything streamscore needs to score a team's own topic.

    ``event``: the pydantic model of one event; ``key``: its field equal to the
    record key (the entity); ``event_id``: its unique id; ``time``: its event
    time in epoch seconds (None: the record timestamp). ``state``: named
    aggregates per entity, ``window``: the entity's last events. ``profile``:
    numeric features the features topic carries per entity. ``features``: a
    function from a :class:`Batch` to the named model ``inputs``. ``model``:
    the default model reference; ``fallback``: the lighter model the ladder falls back
    to when the primary cannot score (``STREAMSCORE_FALLBACK_MODEL`` overrides it;
    None: no fallback model); ``architectures``: the classes that
    safetensors artifacts of this pipeline may name; ``trainer``: what
    ``streamscore train`` runs for it (output directory, seed -> metrics; the
    keywords ``version`` and ``architecture`` too, from ``--version`` and
    ``--architecture``, when it takes them);
    ``sample``: the events ``streamscore demo`` replays when given no file (JSON
    values, in the order to publish them); ``traffic``: synthetic traffic instead, made
    from (entities, seed), which ``demo`` publishes when given no file and
    ``produce`` publishes to a running deployment. ``model_format``: how its artifacts are
    read and loaded, for a pipeline whose models are neither ``torch.export``
    programs nor safetensors of a declared architecture.
    """

    name: str
    event: type[BaseModel]
    key: str
    event_id: str
    features: FeatureFunction
    inputs: Mapping[str, Tensor]
    model: str | None = None
    fallback: str | None = None
    time: str | None = None
    state: Mapping[str, Aggregate] = field(default_factory=dict)
    window: Window | None = None
    profile: Sequence[str] = ()
    architectures: Mapping[str, type[object]] = field(default_factory=dict)
    description: str = ""
    trainer: Callable[[Path, int], Mapping[str, float]] | None = None
    sample: Callable[[], Sequence[bytes]] | None = None
    traffic: Callable[[int, int], Traffic] | None = None
    model_format: ModelFormat | None = None

    def __post_init__(self) -> None:
        import re

        if not isinstance(self.name, str) or not re.match(_NAME, self.name):
            raise PipelineError(f"pipeline name {self.name!r} must match {_NAME}")
        schema = EventSchema(self.event, key=self.key, event_id=self.event_id, time=self.time)
        layout = StateLayout(self.state, self.window)
        for used in layout.fields:
            if not schema.numeric(used):
                raise PipelineError(
                    f"state reads {used!r}, which is not a numeric field of {schema.name}"
                )
        if not callable(self.features):
            raise PipelineError("features must be a function of a Batch")
        if not self.inputs:
            raise PipelineError("inputs must name at least one model input, e.g. {'x': Tensor()}")
        for name, spec in self.inputs.items():
            if not isinstance(spec, Tensor):
                raise PipelineError(f"input {name!r} is {spec!r}, not a Tensor(dtype, shape)")
            if not name.isidentifier() or name == "line":
                raise PipelineError(f"input name {name!r} must be an identifier other than 'line'")
        profile = tuple(self.profile)
        if len(set(profile)) != len(profile) or not all(isinstance(p, str) and p for p in profile):
            raise PipelineError(f"profile must list distinct feature names: {profile!r}")
        object.__setattr__(self, "profile", profile)
        object.__setattr__(self, "schema", schema)
        object.__setattr__(self, "layout", layout)

    # Set in __post_init__ (a frozen dataclass cannot assign them otherwise).
    schema: EventSchema = field(init=False, repr=False, compare=False)
    layout: StateLayout = field(init=False, repr=False, compare=False)

    def model_inputs(self, batch: Batch) -> tuple[dict[str, np.ndarray], npt.NDArray[np.bool_]]:
        """The features of ``batch`` as the declared inputs, and which rows are unusable.

        A row is unusable when one of its float inputs is NaN or infinite (an input
        declared ``finite=False`` excepted): it cannot be scored, and becomes a dead
        letter of the ``features`` stage.
        A function that returns the wrong names, dtypes or shapes is a
        :class:`PipelineError` (a bug in the pipeline, not in an event).
        """
        try:
            produced = self.features(batch)
        except PipelineError:
            raise
        except Exception as exc:
            raise PipelineError(
                f"pipeline {self.name!r}: features raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(produced, Mapping):
            raise PipelineError(f"pipeline {self.name!r}: features must return a dict of arrays")
        missing = sorted(set(self.inputs) - set(produced))
        extra = sorted(set(produced) - set(self.inputs))
        if missing or extra:
            raise PipelineError(
                f"pipeline {self.name!r}: features returned {sorted(produced)}, the inputs are "
                f"{sorted(self.inputs)} (missing {missing or 'none'}, unexpected {extra or 'none'})"
            )
        n = len(batch)
        out: dict[str, np.ndarray] = {}
        bad = np.zeros(n, dtype=np.bool_)
        for name, spec in self.inputs.items():
            array = np.asarray(produced[name])
            if array.shape != (n, *spec.shape):
                raise PipelineError(
                    f"pipeline {self.name!r}: input {name!r} has shape {list(array.shape)}, "
                    f"declared {[n, *spec.shape]} for {n} events"
                )
            if array.dtype.kind not in "biuf":
                raise PipelineError(
                    f"pipeline {self.name!r}: input {name!r} is {array.dtype}, not numeric"
                )
            array = array.astype(spec.numpy_dtype, copy=False)
            if array.dtype.kind == "f" and n and spec.finite:
                bad |= ~np.isfinite(array.reshape(n, -1)).all(axis=1)
            out[name] = array
        return out, bad

    def describe_inputs(self) -> dict[str, dict[str, object]]:
        """The ``inputs`` of a manifest made for this pipeline."""
        return {name: spec.as_manifest() for name, spec in self.inputs.items()}
