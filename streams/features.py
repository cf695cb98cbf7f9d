"""Stages 2 and 3: look up each event's entity in the tables, and update its history.

Per chunk, for each partition in it: one multi-get for the profiles and one
for the histories of its distinct entities (the tables are co-partitioned
with events, so they are in that partition's local database), then
:func:`models.featurize.roll` gives each event the history *before* it, in
offset order, and the changed histories are written back in one batch and
sent to the changelog. An entity never seen is scored with imputed features.
Stored state that cannot be read is a ``features`` dead letter for that
entity's events, not a guess.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter

import numpy as np
import orjson

from models.featurize import (
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    Aggregate,
    RawFeatures,
    featurize,
    roll,
)
from schemas.events import EventRecord
from streams.decode import Record
from streams.emit import Outgoing
from streams.state import TableState

log = logging.getLogger(__name__)

_ENTITY, _AMOUNT, _TS = itemgetter("entity_id"), itemgetter("amount"), itemgetter("ts")
_CHANNEL, _COUNTRY, _CURRENCY = itemgetter("channel"), itemgetter("country"), itemgetter("currency")
_OFFSET = attrgetter("offset")

_NO_FEATURES = RawFeatures(
    np.empty((0, len(NUMERIC_FEATURES)), dtype=np.float32), tuple([] for _ in CATEGORICAL_FEATURES)
)


@dataclass(frozen=True, slots=True)
class Prepared:
    """Model input for the events that could be featurized, and what became of the others."""

    keep: list[int]  # positions (in the chunk) of the events in ``raw``
    raw: RawFeatures
    changelog: list[Outgoing]  # history writes to produce before the chunk may commit
    failed: dict[int, Exception]  # position -> why its features could not be read


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
        start: dict[str, Aggregate | None] = {}
        broken: dict[str, Exception] = {}
        for partition, distinct in by_partition.items():
            keys = [entity.encode() for entity in distinct]
            try:
                stored_profiles = self.profiles.get_many(partition, keys)
                stored_history = self.history.get_many(partition, keys)
            except Exception as exc:  # the state store failed: every event here is affected
                log.exception("reading state of partition %d failed", partition)
                broken.update(dict.fromkeys(distinct, exc))
                continue
            for entity, profile, history in zip(
                distinct, stored_profiles, stored_history, strict=True
            ):
                try:
                    profile_of[entity] = None if profile is None else orjson.loads(profile)
                    start[entity] = None if history is None else Aggregate.unpack(history)
                except Exception as exc:
                    broken[entity] = exc

        keep = list(range(len(events)))
        failed: dict[int, Exception] = {}
        if broken:
            keep = [i for i in keep if entities[i] not in broken]
            failed = {i: broken[entities[i]] for i in range(len(events)) if entities[i] in broken}
            log.error("unreadable state for %d entities", len(broken))
            if not keep:
                return Prepared([], _NO_FEATURES, [], failed)

        kept_events = [events[i] for i in keep] if broken else events
        kept_entities = [entities[i] for i in keep] if broken else entities
        # map() with itemgetter walks each column in C, cheaper than a comprehension.
        amounts = list(map(_AMOUNT, kept_events))
        timestamps = list(map(_TS, kept_events))
        offsets = [records[i].offset for i in keep] if broken else list(map(_OFFSET, records))
        rolled = roll(kept_entities, amounts, timestamps, offsets, start)
        raw = featurize(
            amounts,
            timestamps,
            list(map(_CHANNEL, kept_events)),
            list(map(_COUNTRY, kept_events)),
            list(map(_CURRENCY, kept_events)),
            list(map(profile_of.__getitem__, kept_entities)),
            rolled,
        )
        writes: dict[int, dict[bytes, bytes]] = {}
        for entity, agg in rolled.final.items():
            writes.setdefault(partition_of[entity], {})[entity.encode()] = agg.pack()
        changelog = [
            message
            for partition, items in writes.items()
            for message in self.history.put_many(partition, items)
        ]
        return Prepared(keep, raw, changelog, failed)
