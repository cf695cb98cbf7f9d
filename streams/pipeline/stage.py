"""From validated events to model inputs: state read, walked, written; features computed.

:func:`featurize` is the features stage of every pipeline, the same for the
worker (``read`` is one multi-get on the state table) and for ``pipeline
check`` and ``pipeline features`` (``read`` is a dict). Per chunk it reads
each distinct entity's state once, walks the chunk
(:func:`streams.pipeline.walk.walk`), calls the pipeline's feature function
once, and returns the state to write back, one value per entity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.pipeline.declare import Batch, Pipeline
from streams.pipeline.errors import PipelineError
from streams.pipeline.events import Column
from streams.pipeline.walk import walk

__all__ = ["NON_FINITE", "UNREADABLE", "Featurized", "ProfileRead", "StateRead", "featurize"]

Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Featurized:
    """A chunk's model inputs and what to write back."""

    inputs: dict[str, np.ndarray]  # name -> (n, *shape), the declared dtype
    unusable: Bools  # rows that cannot be scored (``failures`` says why)
    failures: dict[int, str]  # row -> why it has no features
    restarted: Bools  # rows whose stored state could not be read or decoded (scored degraded)
    time: npt.NDArray[np.float64]  # each event's time, epoch seconds
    columns: Mapping[str, Column]  # the events' fields, as the feature function read them
    entities: list[str]  # the distinct entities of the chunk, in first-seen order
    writes: list[bytes]  # each one's state after the chunk


#: Reads the stored state of distinct entities (None: never seen; :data:`UNREADABLE`: the
#: store failed for it).
StateRead = Callable[[list[str]], Sequence[bytes | None]]
#: What a state read gives for an entity the store failed to read: like a record that
#: cannot be decoded, walked from empty and marked unknown (no record is empty).
UNREADABLE = b""
#: Reads the profile features of distinct entities: name -> one value each (NaN: unknown).
ProfileRead = Callable[[list[str]], Mapping[str, npt.NDArray[np.float64]]]


def featurize(
    pipeline: Pipeline,
    events: Sequence[Any],
    offsets: npt.NDArray[np.int64],
    record_times: npt.NDArray[np.float64],
    read: StateRead,
    profile: ProfileRead | None = None,
) -> Featurized:
    """The features of ``events`` (each entity's in offset order), their entities'
    state read once through ``read`` and walked.

    A feature function that raises (or returns the wrong arrays) is retried on
    halves of the chunk, down to the events it fails for: only those lose
    their features (``failures``), their neighbours keep theirs. Every event
    counts in the state all the same, as it would in ``pipeline check``.
    """
    schema, layout = pipeline.schema, pipeline.layout
    columns = schema.columns(events)
    n = len(events)
    time = columns[schema.time].astype(np.float64) if schema.time else record_times
    keys = columns[schema.key]
    distinct = list(dict.fromkeys(keys.tolist()))
    index = {entity: i for i, entity in enumerate(distinct)}
    groups = np.fromiter(map(index.__getitem__, keys), dtype=np.int64, count=n)
    stored, undecodable = layout.decode(list(read(distinct)))
    numeric = {name: columns[name].astype(np.float64, copy=False) for name in layout.fields}
    walked = walk(layout, groups, offsets, time, numeric, stored)
    if profile is None or not pipeline.profile:
        profiles = {name: np.full(n, np.nan) for name in pipeline.profile}
    else:
        per_entity = profile(distinct)
        profiles = {name: per_entity[name][groups] for name in pipeline.profile}
    unknown = undecodable[groups]
    batch = Batch(columns, time, walked.state, walked.window, walked.length, profiles, unknown)
    inputs, unusable, failures = _features(pipeline, batch)
    return Featurized(
        inputs, unusable, failures, unknown, time, columns, distinct,
        layout.encode(walked.final),
    )  # fmt: skip


def _features(
    pipeline: Pipeline, batch: Batch
) -> tuple[dict[str, np.ndarray], Bools, dict[int, str]]:
    """The model inputs of ``batch``, isolating the events the feature function fails for."""
    n = len(batch)
    try:
        inputs, unusable = pipeline.model_inputs(batch)
    except PipelineError as exc:
        if n <= 1:
            blank = {
                name: np.zeros((n, *spec.shape), spec.numpy_dtype)
                for name, spec in pipeline.inputs.items()
            }
            return blank, np.ones(n, np.bool_), dict.fromkeys(range(n), str(exc))
        half = n // 2
        left = _features(pipeline, batch.rows(0, half))
        right = _features(pipeline, batch.rows(half, n))
        merged = {k: np.concatenate([left[0][k], right[0][k]]) for k in pipeline.inputs}
        failures = {**left[2], **{half + row: why for row, why in right[2].items()}}
        return merged, np.concatenate([left[1], right[1]]), failures
    failures = {}
    if unusable.any():
        failures = dict.fromkeys(np.flatnonzero(unusable).tolist(), NON_FINITE)
    return inputs, unusable, failures


#: Why an event whose features are not all finite has no score.
NON_FINITE = "a feature is NaN or infinite"
