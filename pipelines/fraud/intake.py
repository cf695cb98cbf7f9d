"""Stages 2 and 3: look up each event's entity in the tables, and update its history.

Per chunk, for each partition in it: one multi-get for the profiles and one
for the histories of its distinct entities (the tables are co-partitioned
with events, so they are in that partition's local database), then
:func:`pipelines.fraud.features.roll` (the state walk of every pipeline) gives each
event the history *before* it, in offset order, and the changed histories are
written back in one batch and sent to the changelog. An entity never seen is
scored with imputed features.

State that cannot be read does not cost the event its score: a fraud score on
imputed features is worth more than none. The event is scored with what could
be read, the rest imputed, and marked ``degraded`` (counted by reason):

- the store raises on a read: that partition's profiles or histories are
  unknown for this chunk; an unknown history is not written back (the event
  is not counted in it), since a guess would overwrite the real one;
- a stored profile that cannot be decoded: unknown (the next update replaces it);
- a stored history that cannot be decoded: unknown for this event, and the
  entity's history starts over from it (it could never be read again).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter

import numpy as np
import numpy.typing as npt
import orjson

from pipelines.fraud.decode import decode_events
from pipelines.fraud.events import EventRecord
from pipelines.fraud.features import RawFeatures, featurize, roll
from streams.kafka.emit import Outgoing
from streams.kafka.tables import TableState
from streams.scoring.decode import DeadLetter, Record
from streams.scoring.intake import Intake

log = logging.getLogger(__name__)

_ENTITY, _AMOUNT, _TS = itemgetter("entity_id"), itemgetter("amount"), itemgetter("ts")
_CHANNEL, _COUNTRY, _CURRENCY = itemgetter("channel"), itemgetter("country"), itemgetter("currency")
_OFFSET = attrgetter("offset")


@dataclass(frozen=True, slots=True)
class Prepared:
    """Model input for the events that could be featurized, and what became of the others."""

    keep: list[int]  # positions (in the chunk) of the events in ``raw``
    raw: RawFeatures
    changelog: list[Outgoing]  # history writes to produce before the chunk may commit
    failed: dict[int, Exception]  # position -> why it cannot be scored at all
    #: Per row of ``raw``: scored on features partly imputed because state was unreadable.
    degraded: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, np.bool_))
    #: How many of those events there are, by reason (one of DEGRADED_REASONS).
    degraded_reasons: dict[str, int] = field(default_factory=dict)
    read_seconds: float = 0.0  # time the state reads took


class FeatureStage:
    """Profiles (from the features topic) and online history, per partition."""

    def __init__(self, profiles: TableState, history: TableState) -> None:
        self.profiles = profiles
        self.history = history

    def prepare(self, records: Sequence[Record], events: Sequence[EventRecord]) -> Prepared:
        """Model input for a chunk of events (of any partitions, each in offset order)."""
        entities = list(map(_ENTITY, events))
        partition_of: dict[str, int] = {}
        for record, entity in zip(records, entities, strict=True):
            partition_of[entity] = record.partition  # an entity lives in one partition
        by_partition: dict[int, list[str]] = {}
        for entity, partition in partition_of.items():
            by_partition.setdefault(partition, []).append(entity)

        profile_of: dict[str, dict[str, float] | None] = {}
        stored: dict[str, bytes | None] = {}
        unreadable: set[str] = set()  # the store failed: history unknown, not written back
        degraded: dict[str, str] = {}  # entity -> why its features are partly imputed
        read_seconds = 0.0
        for partition, distinct in by_partition.items():
            keys = [entity.encode() for entity in distinct]
            started = time.perf_counter()
            profiles = self._read(self.profiles, partition, keys, distinct, degraded)
            histories = self._read(self.history, partition, keys, distinct, degraded)
            read_seconds += time.perf_counter() - started
            if histories is None:
                unreadable.update(distinct)
            else:
                stored.update(zip(distinct, histories, strict=True))
            for i, entity in enumerate(distinct):
                value = None if profiles is None else profiles[i]
                try:
                    profile_of[entity] = None if value is None else orjson.loads(value)
                except orjson.JSONDecodeError:
                    profile_of[entity] = None
                    degraded.setdefault(entity, "profile_undecodable")

        # map() with itemgetter walks each column in C, cheaper than a comprehension.
        amounts = list(map(_AMOUNT, events))
        timestamps = list(map(_TS, events))
        rolled = roll(entities, amounts, timestamps, list(map(_OFFSET, records)), stored)
        if rolled.restarted.any():  # it could never be read again: it starts over from here
            for row in np.flatnonzero(rolled.restarted).tolist():
                degraded.setdefault(entities[row], "history_undecodable")
        if degraded:
            log.error("state of %d entities could not be read: scored degraded", len(degraded))
        marks = np.zeros(len(events), dtype=np.bool_)
        reasons: Counter[str] = Counter()
        if degraded:
            marks[:] = [entity in degraded for entity in entities]
            reasons.update(degraded[entity] for entity in entities if entity in degraded)
        unknown = rolled.restarted
        if unreadable:
            unknown = unknown | np.fromiter(map(unreadable.__contains__, entities), np.bool_)
        if unknown.any():
            rolled = rolled.unknown(unknown)
        raw = featurize(
            amounts,
            timestamps,
            list(map(_CHANNEL, events)),
            list(map(_COUNTRY, events)),
            list(map(_CURRENCY, events)),
            list(map(profile_of.__getitem__, entities)),
            rolled,
        )
        writes: dict[int, dict[bytes, bytes]] = {}
        for entity, value in rolled.final.items():
            if entity in unreadable:
                continue
            writes.setdefault(partition_of[entity], {})[entity.encode()] = value
        changelog = [
            message
            for partition, items in writes.items()
            for message in self.history.put_many(partition, items)
        ]
        return Prepared(
            list(range(len(events))), raw, changelog, {}, marks, dict(reasons), read_seconds
        )

    @staticmethod
    def _read(
        table: TableState,
        partition: int,
        keys: list[bytes],
        entities: list[str],
        degraded: dict[str, str],
    ) -> list[bytes | None] | None:
        """The stored values of ``keys``, or None (and the entities degraded) if the store fails."""
        try:
            return table.get_many(partition, keys)
        except Exception:  # the state store failed: these entities' state is unknown
            log.exception("reading %s of partition %d failed", table.changelog_topic, partition)
            for entity in entities:
                degraded.setdefault(entity, "state_unreadable")
            return None


_EVENT_ID = itemgetter("event_id")


class FraudIntake:
    """The built-in pipeline's intake: :func:`decode_events`, then :class:`FeatureStage`."""

    def __init__(self, features: FeatureStage) -> None:
        self.features = features

    @property
    def state(self) -> TableState:
        return self.features.history

    def prepare(self, records: Sequence[Record]) -> Intake:
        decoded = decode_events(records)
        if not decoded.items:
            return Intake.dead_only(decoded.dead)
        prepared = self.features.prepare(decoded.records, decoded.items)
        dead = list(decoded.dead)
        dead.extend(
            DeadLetter(decoded.records[i], "features", type(exc).__name__, str(exc))
            for i, exc in sorted(prepared.failed.items())
        )
        if len(prepared.keep) == len(decoded.records):
            kept_records, kept_events = decoded.records, decoded.items
        else:
            kept_records = [decoded.records[i] for i in prepared.keep]
            kept_events = [decoded.items[i] for i in prepared.keep]
        return Intake(
            kept_records,
            kept_events,
            list(map(_EVENT_ID, kept_events)),
            list(map(_ENTITY, kept_events)),
            list(map(_TS, kept_events)),
            prepared.raw if kept_records else None,
            dead,
            prepared.changelog,
            prepared.degraded,
            prepared.degraded_reasons,
            prepared.read_seconds,
        )
