"""What the first stages make of a fetched chunk, whatever the pipeline: the
:class:`Intake` the scoring agent batches, scores and emits.

A pipeline's intake (:class:`streams.scoring.declared.DeclaredIntake`, the same
for every pipeline) decodes and validates the records, reads and walks their
entities' state and computes the model input. The agent never looks inside
an event: it needs each one's id, entity and time for its score, and the
model input, rows in the events' order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from models.inputs import ModelInput
from streams.kafka.emit import Outgoing
from streams.kafka.tables import TableState
from streams.scoring.decode import DeadLetter, Record

__all__ = ["Intake", "IntakeStage"]


@dataclass(frozen=True, slots=True)
class Intake:
    """A chunk's events that can be scored, and the dead letters of those that cannot."""

    records: list[Record]  # the scorable events' records, each partition's in offset order
    events: list[Any]  # the validated events (routing rules read their fields)
    ids: list[str]  # each event's id, entity and time (epoch seconds), for its score
    entities: list[str]
    times: list[float]
    inputs: ModelInput | None  # one row per event (None when there is none)
    dead: list[DeadLetter]  # finished once the chunk's state writes are durable too
    changelog: list[Outgoing]  # state writes to produce before the chunk may commit
    #: Per event: scored on state partly imputed because it was unreadable.
    degraded: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, np.bool_))
    degraded_reasons: dict[str, int] = field(default_factory=dict)  # DEGRADED_REASONS
    read_seconds: float = 0.0  # time the state reads took

    @classmethod
    def dead_only(cls, dead: list[DeadLetter], changelog: Sequence[Outgoing] = ()) -> Intake:
        return cls([], [], [], [], [], None, dead, list(changelog))


class IntakeStage(Protocol):
    """Records to :class:`Intake`: decode, validate, state, features."""

    @property
    def state(self) -> TableState: ...  # the table the changelog writes belong to

    def prepare(self, records: Sequence[Record]) -> Intake: ...
