"""Profile updates to the features table: the work of the features agent.

A fetched chunk of the features topic is decoded and validated (bad updates
become dead letters); the latest profile of each entity in the chunk is
written to its partition's local database in one batch per partition and to
the table's changelog; the offsets are finished once the changelog has it.
An update replaces the entity's whole profile: a feature it leaves out is
unknown from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from faust.types import TP

from streams.errors import EmitError
from streams.kafka.bulk import Chunk
from streams.kafka.emit import Delivered, Emitter
from streams.kafka.flow import Flow
from streams.kafka.tables import TableState
from streams.kafka.transactions import TransactionalEmitter
from streams.metrics import Metrics
from streams.scoring.deadletters import DeadLetterSink
from streams.scoring.decode import DeadLetter, decode_feature_updates

log = logging.getLogger(__name__)


class FeaturePipeline:
    """Keeps the profiles table current from the features topic."""

    def __init__(
        self,
        *,
        flow: Flow,
        profiles: TableState,
        emitter: Emitter | TransactionalEmitter,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.flow = flow
        self.profiles = profiles
        self.emitter = emitter
        self.dead_letters = dead_letters
        self.metrics = metrics
        self._on_fatal = on_fatal
        self._per_source = isinstance(emitter, TransactionalEmitter)

    async def process(self, chunk: Chunk) -> None:
        flow = self.flow
        records = flow.admit_chunk(chunk.parts, chunk.epoch)
        if not records:
            return
        generation = flow.generation
        decoded = decode_feature_updates(records)
        if decoded.dead:
            self._send_dead_letters(decoded.dead, generation)
        if not decoded.items:
            return
        latest: dict[int, dict[bytes, bytes]] = {}
        for record, update in zip(decoded.records, decoded.items, strict=True):
            # In offset order: an entity's last update in the chunk wins.
            latest.setdefault(record.partition, {})[update.entity_id.encode()] = orjson.dumps(
                update.features(), option=orjson.OPT_SORT_KEYS
            )
        changelog = [
            message
            for partition, items in latest.items()
            for message in self.profiles.put_many(partition, items)
        ]
        applied = decoded.records
        source_topic = applied[0].topic

        def written(report: Delivered) -> None:
            if report.failures:
                self._on_fatal(
                    EmitError(f"profile changelog write failed: {report.failures[0][1]}")
                )
                return
            self.profiles.changelog_written(report.offsets)
            self.metrics.feature_updates.inc(len(applied))
            flow.finish_records(applied, generation)

        sources = (
            [TP(source_topic, m.partition or 0) for m in changelog] if self._per_source else None
        )
        self.emitter.send(changelog, written, track_offsets=True, source=sources)

    def _send_dead_letters(self, dead: list[DeadLetter], generation: int) -> None:
        records = [letter.record for letter in dead]
        self.dead_letters.send(
            dead, lambda: self.flow.finish_records(records, generation), events=False
        )
