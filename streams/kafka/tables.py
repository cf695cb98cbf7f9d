"""Bulk access to a Faust table's local RocksDB partitions and to its changelog.

Faust owns the tables: it creates their changelog topics, opens and closes a
RocksDB database per assigned partition, restores them from the changelog
and keeps standby replicas. Per-event table access through Faust costs
microseconds and needs an event context, so the hot path reads and writes
the partition's database directly, a chunk at a time (one multi-get, one
write batch), and produces the changelog records itself. Recovery then reads
those records exactly as if Faust had written them (raw key and value).

Reads go through a write-through cache of recently used keys: the worker is
the only writer of its active partitions' state, so the cache stays exact as
long as it is emptied whenever the assignment changes (recovery writes the
database directly then).

This module is the only one that touches the store's private per-partition
database accessor (faust-streaming is pinned for that reason, and a test
restarts a worker from an empty data directory to prove recovery works).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import rocksdict
from faust.types import TP

from streams.kafka.emit import Outgoing

#: Keys kept in memory per table before the cache starts over.
CACHE_LIMIT = 200_000


class TableState:
    """One Faust table (raw ``bytes`` keys and values), partition by partition."""

    def __init__(self, table: Any, cache_limit: int = CACHE_LIMIT) -> None:
        self._table = table
        self.changelog_topic: str = table.changelog_topic.get_topic_name()
        self._cache: dict[tuple[int, bytes], bytes | None] = {}
        self._cache_limit = cache_limit
        self._generation: int | None = None

    @property
    def _store(self) -> Any:
        return self._table.data

    def _cache_for_now(self) -> dict[tuple[int, bytes], bytes | None]:
        generation = self._table.app.consumer_generation_id
        if generation != self._generation or len(self._cache) > self._cache_limit:
            self._cache.clear()  # a new assignment: recovery may have rewritten anything
            self._generation = generation
        return self._cache

    def get_many(self, partition: int, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values of ``keys`` in this partition's database (``None`` where absent)."""
        if not keys:
            return []
        cache = self._cache_for_now()
        values: list[bytes | None] = []
        missing: list[int] = []
        for index, key in enumerate(keys):
            entry = (partition, key)
            if entry in cache:
                values.append(cache[entry])
            else:
                values.append(None)
                missing.append(index)
        if missing:
            db = self._store._db_for_partition(partition)
            found = db.get([keys[i] for i in missing])
            for index, value in zip(missing, found, strict=True):
                values[index] = value
                cache[(partition, keys[index])] = value
        return values

    def put_many(self, partition: int, items: Mapping[bytes, bytes]) -> list[Outgoing]:
        """Write ``items`` locally in one batch; return the changelog records to produce."""
        if not items:
            return []
        batch = rocksdict.WriteBatch(raw_mode=True)
        cache = self._cache_for_now()
        for key, value in items.items():
            batch.put(key, value)
            cache[(partition, key)] = value
        self._store._db_for_partition(partition).write(batch)
        topic = self.changelog_topic
        return [Outgoing(topic, key, value, None, partition) for key, value in items.items()]

    def changelog_written(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Remember the changelog offsets now durable, so a restart replays only what follows."""
        store = self._store
        for (topic, partition), offset in offsets.items():
            # A partition revoked meanwhile is not reopened just to note its offset.
            if topic == self.changelog_topic and partition in store._dbs:
                store.set_persisted_offset(TP(topic, partition), offset)
