"""Profile updates to the features table: the work of the features agent.

A chunk of one partition of the features topic is decoded and validated
(bad updates become dead letters); the latest profile of each entity in the
chunk is written to the partition's local database in one batch and to the
table's changelog; the offsets are finished once the changelog has it.
An update replaces the entity's whole profile: a feature it leaves out is
unknown from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson

from streams.bulk import Chunk
from streams.deadletters import DeadLetterSink
from streams.decode import DeadLetter, decode_feature_updates
from streams.emit import Delivered, Emitter
from streams.errors import EmitError
from streams.flow import Flow
from streams.metrics import Metrics
from streams.state import TableState
from streams.transactions import TransactionalEmitter

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

    async def process(self, chunk: Chunk) -> None:
        flow = self.flow
        skip = flow.admit(chunk.tp, chunk.epoch, [r.offset for r in chunk.records])
        if skip is None:
            return
        records = chunk.records[skip:] if skip else chunk.records
        generation = flow.generation
        decoded = decode_feature_updates(records)
        tp = chunk.tp
        if decoded.dead:
            self._send_dead_letters(chunk, decoded.dead, generation)
        if not decoded.items:
            return
        latest = {
            update.entity_id.encode(): orjson.dumps(update.features(), option=orjson.OPT_SORT_KEYS)
            for update in decoded.items  # in offset order: the last update of an entity wins
        }
        partition = decoded.records[0].partition
        changelog = self.profiles.put_many(partition, latest)
        offsets = [record.offset for record in decoded.records]
        applied = len(decoded.items)

        def written(report: Delivered) -> None:
            if report.failures:
                self._on_fatal(
                    EmitError(f"profile changelog write failed: {report.failures[0][1]}")
                )
                return
            self.profiles.changelog_written(report.offsets)
            self.metrics.feature_updates.inc(applied)
            flow.finish(tp, offsets, generation)

        self.emitter.send(changelog, written, track_offsets=True, source=tp)

    def _send_dead_letters(self, chunk: Chunk, dead: list[DeadLetter], generation: int) -> None:
        offsets = [letter.record.offset for letter in dead]

        def delivered(report: Delivered) -> None:
            if report.failures:
                self._on_fatal(EmitError(f"dead letter not delivered: {report.failures[0][1]}"))
                return
            self.dead_letters.delivered(dead, events=False)
            self.flow.finish(chunk.tp, offsets, generation)

        self.emitter.send(self.dead_letters.messages(dead), delivered, source=chunk.tp)
