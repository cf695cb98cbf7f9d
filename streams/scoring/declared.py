"""A declared pipeline's intake: records to model inputs, a whole chunk at a time.

The same code ``pipeline check`` runs (:func:`streams.pipeline.stage.featurize`),
with the state table in place of a dict:

- validate every record against the pipeline's event (msgspec over the chunk
  in one C loop when it can; pydantic names the fault of a bad record), the
  record key equal to the event's key field; bad records are dead letters of
  stage ``decode`` or ``validate``;
- read the state of the chunk's distinct entities with one multi-get per
  partition (and their profiles, when the pipeline declares some), walk the
  chunk, compute the features once, and write each changed state back in one
  batch per partition, sent to the changelog;
- an event whose features the function fails for, or which are not finite,
  is a dead letter of stage ``features``; it still counts in its entity's
  state, as it does in ``pipeline check``.

State that cannot be read degrades instead of dead-lettering (a score on partly
imputed features is worth more than none): a store that raises leaves those
entities' state unknown for the chunk (walked from empty, marked ``unknown`` in
the batch, never written back), and a stored record that cannot be decoded
(another declaration's, or corrupt) is unknown too, and starts over.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from models.inputs import NamedInputs
from streams.kafka.tables import TableState
from streams.kafka.undecodable import UndecodableRecord
from streams.pipeline.declare import Pipeline
from streams.pipeline.events import EventSchema, Invalid
from streams.pipeline.stage import UNREADABLE, featurize
from streams.scoring.decode import DeadLetter, Decoded, Record
from streams.scoring.intake import Intake

log = logging.getLogger(__name__)

_KEY, _VALUE, _OFFSET = attrgetter("key"), attrgetter("value"), attrgetter("offset")
_TIMESTAMP, _PARTITION = attrgetter("timestamp"), attrgetter("partition")


class DeclaredIntake:
    """Validation, state and features of one declared pipeline, over the state tables."""

    def __init__(self, pipeline: Pipeline, profiles: TableState, state: TableState) -> None:
        self.pipeline = pipeline
        self.profiles = profiles
        self._state = state
        self._event_id = attrgetter(pipeline.schema.event_id)
        self._entity = attrgetter(pipeline.schema.key)

    @property
    def state(self) -> TableState:
        return self._state

    def prepare(self, records: Sequence[Record]) -> Intake:
        decoded = validate_records(self.pipeline.schema, records)
        events, kept, dead = decoded.items, decoded.records, decoded.dead
        if not events:
            return Intake.dead_only(dead)
        n = len(events)
        partition_of = dict(zip(map(self._entity, events), map(_PARTITION, kept), strict=True))
        offsets = np.fromiter(map(_OFFSET, kept), np.int64, n)
        stamps = np.fromiter((t or 0 for t in map(_TIMESTAMP, kept)), np.float64, n) / 1000.0
        degraded: dict[str, str] = {}
        unreadable: set[str] = set()
        seconds = [0.0]

        def read(table: TableState, distinct: list[str]) -> list[bytes | None]:
            """Stored values of ``distinct`` entities: one multi-get per partition
            (:data:`UNREADABLE` for those of a partition whose read failed)."""
            values: list[bytes | None] = [None] * len(distinct)
            by_partition: dict[int, list[int]] = {}
            for i, entity in enumerate(distinct):
                by_partition.setdefault(partition_of[entity], []).append(i)
            started = time.perf_counter()
            for partition, rows in by_partition.items():
                try:
                    found = table.get_many(partition, [distinct[i].encode() for i in rows])
                except Exception:  # the store failed: these entities' state is unknown
                    log.exception(
                        "reading %s of partition %d failed", table.changelog_topic, partition
                    )
                    for i in rows:
                        degraded.setdefault(distinct[i], "state_unreadable")
                        if table is self._state:
                            unreadable.add(distinct[i])
                            values[i] = UNREADABLE
                    continue
                for i, value in zip(rows, found, strict=True):
                    values[i] = value
            seconds[0] += time.perf_counter() - started
            return values

        def profile(distinct: list[str]) -> dict[str, npt.NDArray[np.float64]]:
            names = self.pipeline.profile
            out = {name: np.full(len(distinct), np.nan) for name in names}
            for i, stored in enumerate(read(self.profiles, distinct)):
                if stored is None:
                    continue
                try:
                    features = orjson.loads(stored)
                except orjson.JSONDecodeError:
                    degraded.setdefault(distinct[i], "profile_undecodable")
                    continue
                for name in names:
                    value = features.get(name)
                    if isinstance(value, int | float):
                        out[name][i] = value
            return out

        featurized = featurize(
            self.pipeline, events, offsets, stamps, lambda d: read(self._state, d), profile
        )
        entities: list[str] = featurized.columns[self.pipeline.schema.key].tolist()
        marks = featurized.restarted.copy()
        reasons: Counter[str] = Counter()
        if marks.any():
            restarted = {entities[row] for row in np.flatnonzero(marks).tolist()}
            for entity in restarted:
                degraded.setdefault(entity, "history_undecodable")
        if degraded:
            log.error("state of %d entities could not be read: scored degraded", len(degraded))
            marks = np.fromiter(map(degraded.__contains__, entities), np.bool_, n)
            reasons.update(degraded[e] for e in entities if e in degraded)

        writes: dict[int, dict[bytes, bytes]] = {}
        for entity, value in zip(featurized.entities, featurized.writes, strict=True):
            if entity not in unreadable:
                writes.setdefault(partition_of[entity], {})[entity.encode()] = value
        changelog = [
            message
            for partition, items in writes.items()
            for message in self._state.put_many(partition, items)
        ]
        inputs = NamedInputs(featurized.inputs, n)
        ids: list[str] = list(map(self._event_id, events))
        times: list[float] = featurized.time.tolist()
        if featurized.failures:
            for row, why in sorted(featurized.failures.items()):
                dead.append(DeadLetter(kept[row], "features", "FeatureError", why))
            rows = np.flatnonzero(~featurized.unusable)
            index = rows.tolist()
            inputs = inputs.select(rows)
            kept = [kept[i] for i in index]
            events = [events[i] for i in index]
            ids = [ids[i] for i in index]
            entities = [entities[i] for i in index]
            times = [times[i] for i in index]
            marks = marks[rows]
            if not index:
                return Intake.dead_only(dead, changelog)
        return Intake(
            kept, events, ids, entities, times, inputs, dead, changelog, marks, dict(reasons),
            seconds[0],
        )  # fmt: skip


def validate_records(schema: EventSchema, records: Sequence[Record]) -> Decoded[Any]:
    """A chunk's valid events, with their records (in order); the rest dead letters of
    stage ``decode`` or ``validate``, each with its reason."""
    if UndecodableRecord in set(map(type, records)):
        checked: list[object] = []
        for record in records:
            if type(record) is UndecodableRecord:
                checked.append(Invalid("decode", "UnicodeDecodeError", record.reason))
            else:
                checked.append(schema.validate(record.key, record.value, keyed=True))
    else:
        checked = schema.validate_many(list(map(_KEY, records)), list(map(_VALUE, records)))
    if Invalid not in set(map(type, checked)):
        return Decoded(list(records), checked, [])
    dead: list[DeadLetter] = []
    events: list[object] = []
    kept: list[Record] = []
    for record, item in zip(records, checked, strict=True):
        if isinstance(item, Invalid):
            dead.append(DeadLetter(record, item.stage, item.error_class, item.message))
        else:
            events.append(item)
            kept.append(record)
    return Decoded(kept, events, dead)
