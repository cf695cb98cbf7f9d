"""A pipeline over a file of events, as the worker would score them: ``pipeline check`` and
``pipeline features``.

Lines are events in order (line N has offset N; the key is the event's entity
key), starting from empty state. They go through the worker's own code: the
event validation of :class:`~streams.pipeline.events.EventSchema`, the state
walk and features of :func:`~streams.pipeline.stage.featurize` (a dict stands
in for the state table), and the model's ``predict``, in chunks as a worker
gets them, so the features a model is trained on are the worker's, point in
time correct.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from streams.pipeline.declare import Pipeline
from streams.pipeline.events import Invalid
from streams.pipeline.stage import Featurized, featurize

__all__ = ["Chunk", "Failure", "run_lines"]

#: Events per chunk: about what a worker's fetch brings per partition.
CHUNK = 1024


@dataclass(frozen=True, slots=True)
class Failure:
    """A line that cannot be scored: where it stopped and why."""

    line: int
    stage: str
    error: str

    def as_json(self) -> dict[str, object]:
        return {"line": self.line, "stage": self.stage, "error": self.error}


@dataclass(frozen=True, slots=True)
class Chunk:
    """The valid events of some lines, their features, and the lines that failed."""

    lines: npt.NDArray[np.int64]  # line number of each valid event
    events: list[BaseModel]
    featurized: Featurized | None  # None when no line of the chunk was valid
    failures: list[Failure] = field(default_factory=list)


def run_lines(pipeline: Pipeline, lines: Iterable[bytes], chunk: int = CHUNK) -> Iterator[Chunk]:
    """Validate and featurize ``lines`` (numbered from 1) chunk by chunk, state carried over."""
    table: dict[str, bytes] = {}
    numbered = enumerate(lines, start=1)
    while block := list(itertools.islice(numbered, chunk)):
        events: list[BaseModel] = []
        valid: list[int] = []
        failures: list[Failure] = []
        for number, raw in block:
            raw = raw.rstrip(b"\r\n")
            checked = pipeline.schema.validate(None, raw)
            if isinstance(checked, Invalid):
                failures.append(Failure(number, checked.stage, checked.message))
            else:
                events.append(checked)
                valid.append(number)
        if not events:
            yield Chunk(np.zeros(0, np.int64), [], None, failures)
            continue
        offsets = np.asarray(valid, dtype=np.int64)
        now = np.full(len(events), time.time())
        featurized = featurize(
            pipeline, events, offsets, now, lambda keys: [table.get(k) for k in keys]
        )
        table.update(zip(featurized.entities, featurized.writes, strict=True))
        for row, why in sorted(featurized.failures.items()):
            failures.append(Failure(int(offsets[row]), "features", why))
        yield Chunk(offsets, events, featurized, failures)
