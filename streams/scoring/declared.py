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
import operator
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
        if self.pipeline.schema.time is None:  # the record timestamp is the event time
            stamps = np.fromiter((t or 0 for t in map(_TIMESTAMP, kept)), np.float64, n) / 1e3
        else:
            stamps = np.zeros(n)
        degraded: dict[str, str] = {}
        unreadable: set[str] = set()
        seconds = [0.0]
        # The chunk's distinct entities by partition, with their keys: the state and the
        # profiles are read (and the state written) for the same entities.
        grouped: dict[int, tuple[list[int], list[bytes]]] = {}
        key_of: dict[str, bytes] = {}
        grouped_for: list[list[str]] = []

        def by_partition(distinct: list[str]) -> dict[int, tuple[list[int], list[bytes]]]:
            if not grouped_for or grouped_for[0] is not distinct:
                grouped.clear()
                grouped_for[:] = [distinct]
                keys = list(map(str.encode, distinct))
                key_of.update(zip(distinct, keys, strict=True))
                partitions = np.fromiter(map(partition_of.__getitem__, distinct), np.int64)
                for partition in np.unique(partitions).tolist():
                    rows = np.flatnonzero(partitions == partition).tolist()
                    grouped[partition] = rows, [keys[i] for i in rows]
            return grouped

        def read(table: TableState, distinct: list[str]) -> list[bytes | None]:
            """Stored values of ``distinct`` entities: one multi-get per partition
            (:data:`UNREADABLE` for those of a partition whose read failed)."""
            values: list[bytes | None] = [None] * len(distinct)
            started = time.perf_counter()
            for partition, (rows, keys) in by_partition(distinct).items():
                try:
                    found = table.get_many(partition, keys)
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
            parsed: list[dict[str, object]] = []
            for i, stored in enumerate(read(self.profiles, distinct)):
                features = _NO_PROFILE
                if stored is not None:
                    try:
                        features = orjson.loads(stored)
                    except orjson.JSONDecodeError:
                        degraded.setdefault(distinct[i], "profile_undecodable")
                    if type(features) is not dict:
                        features = _NO_PROFILE
                parsed.append(features)
            return {name: _numbers(parsed, name) for name in self.pipeline.profile}

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
                key = key_of.get(entity) or entity.encode()
                writes.setdefault(partition_of[entity], {})[key] = value
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


_NO_PROFILE: dict[str, object] = {}


def _numbers(profiles: list[dict[str, object]], name: str) -> npt.NDArray[np.float64]:
    """Each profile's number ``name`` (NaN where it has none): one C loop over them."""
    values = list(map(operator.methodcaller("get", name), profiles))
    try:  # numpy reads None as NaN; stored profiles hold numbers or null (FeatureUpdate)
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # something else: that entity has none
        return np.array(
            [v if isinstance(v, int | float) else np.nan for v in values], dtype=np.float64
        )
