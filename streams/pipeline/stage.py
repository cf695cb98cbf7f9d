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

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from streams.pipeline.declare import Batch, Pipeline
from streams.pipeline.walk import walk

__all__ = ["Featurized", "featurize"]

Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Featurized:
    """A chunk's model inputs and what to write back."""

    inputs: dict[str, np.ndarray]  # name -> (n, *shape), the declared dtype
    unusable: Bools  # rows whose features are not finite: they cannot be scored
    restarted: Bools  # rows whose stored state could not be decoded (scored degraded)
    time: npt.NDArray[np.float64]  # each event's time, epoch seconds
    entities: list[str]  # the distinct entities of the chunk, in first-seen order
    writes: list[bytes]  # each one's state after the chunk


def featurize(
    pipeline: Pipeline,
    events: Sequence[BaseModel],
    offsets: npt.NDArray[np.int64],
    record_times: npt.NDArray[np.float64],
    read: Callable[[list[str]], Sequence[bytes | None]],
    profile: Mapping[str, npt.NDArray[np.float64]] | None = None,
) -> Featurized:
    """The features of ``events`` (one partition's, in offset order), their entities'
    state read once through ``read`` and walked."""
    schema, layout = pipeline.schema, pipeline.layout
    columns = schema.columns(events)
    n = len(events)
    time = columns[schema.time].astype(np.float64) if schema.time else record_times
    keys = columns[schema.key]
    distinct = list(dict.fromkeys(keys.tolist()))
    index = {entity: i for i, entity in enumerate(distinct)}
    groups = np.fromiter((index[k] for k in keys), dtype=np.int64, count=n)
    stored, undecodable = layout.decode(list(read(distinct)))
    numeric = {name: columns[name].astype(np.float64, copy=False) for name in layout.fields}
    walked = walk(layout, groups, offsets, time, numeric, stored)
    if profile is None:
        profile = {name: np.full(n, np.nan) for name in pipeline.profile}
    batch = Batch(columns, time, walked.state, walked.window, walked.length, profile)
    inputs, unusable = pipeline.model_inputs(batch)
    return Featurized(
        inputs, unusable, undecodable[groups], time, distinct, layout.encode(walked.final)
    )
