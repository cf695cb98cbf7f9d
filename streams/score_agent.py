"""Event to score, top to bottom: the work of the scoring agent, one fetched chunk at a time.

    chunk of records (one partition)
      -> admit (flow.py: register offsets; stale chunks dropped)
      -> decode + validate (decode.py)          bad ones -> dead letters
      -> features + history (features.py)       unreadable state -> dead letters
      -> micro-batcher (batcher.py)             events of all partitions gather
      -> model, off the loop (inference.py)     poison events isolated -> dead letters
      -> scores produced in batch order (emit.py)
      -> acknowledged: offsets finished (ordering.py), so they may be committed

Per-key order holds because a partition's events enter the batcher in offset
order, batches are delivered in dispatch order, and one idempotent producer
keeps per-partition order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np
import orjson

from models.featurize import RawFeatures
from schemas.events import EventRecord
from streams.batcher import Batch, MicroBatcher
from streams.bulk import Chunk
from streams.deadletters import DeadLetterSink
from streams.decode import DeadLetter, Record, decode_events
from streams.emit import Delivered, Emitter, Outgoing
from streams.errors import EmitError
from streams.features import FeatureStage
from streams.flow import Flow
from streams.inference import Inference, Scored
from streams.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScoringPart:
    """Consecutive valid events of one partition, with their model input."""

    tp: Hashable
    records: list[Record]
    events: list[EventRecord]
    raw: RawFeatures
    state: asyncio.Future[None]  # resolved when the chunk's history writes are durable
    generation: int

    def __len__(self) -> int:
        return len(self.records)

    def split(self, n: int) -> tuple[Self, Self]:
        cls = type(self)
        head = cls(
            self.tp, self.records[:n], self.events[:n], self.raw.take(0, n), self.state,
            self.generation,
        )  # fmt: skip
        tail = cls(
            self.tp, self.records[n:], self.events[n:], self.raw.take(n, len(self)), self.state,
            self.generation,
        )  # fmt: skip
        return head, tail


class ScoringPipeline:
    """Decode, featurize, batch, infer and emit the events of every owned partition."""

    def __init__(
        self,
        *,
        flow: Flow,
        features: FeatureStage,
        inference: Inference,
        emitter: Emitter,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        scores_topic: str,
        max_batch_size: int,
        max_wait_s: float,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.flow = flow
        self.features = features
        self.inference = inference
        self.emitter = emitter
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.scores_topic = scores_topic
        self._on_fatal = on_fatal
        self.batcher: MicroBatcher[ScoringPart, Scored] = MicroBatcher(
            self._run,
            self._deliver,
            max_size=max_batch_size,
            max_wait=max_wait_s,
            capacity=max(flow.max_in_flight, max_batch_size),
        )
        flow.on_drain(self.batcher.drain)
        model = inference.model
        self._model_name = model.name
        self._model_version = model.version
        self._scores_counter = metrics.scores.labels(model.name, model.version, "primary")
        self._compute = metrics.model_compute.labels(model.name, model.version, str(model.device))

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    # -- intake ----------------------------------------------------------------------------
    async def process(self, chunk: Chunk) -> None:
        """Take one fetched chunk of the events topic through to the batcher."""
        flow = self.flow
        records: Sequence[Record] = chunk.records
        skip = flow.admit(chunk.tp, chunk.epoch, [r.offset for r in records])
        if skip is None:
            return  # fetched before a drain: it will be read again
        if skip:
            records = records[skip:]
        generation = flow.generation
        decoded = decode_events(records)
        if decoded.dead:
            self._send_dead_letters(chunk.tp, decoded.dead, generation)
        if not decoded.items:
            return
        partition = decoded.records[0].partition
        prepared = self.features.prepare(partition, decoded.records, decoded.items)
        if prepared.failed:
            dead = [
                DeadLetter(decoded.records[i], "features", type(exc).__name__, str(exc))
                for i, exc in sorted(prepared.failed.items())
            ]
            self._send_dead_letters(chunk.tp, dead, generation)
        if not prepared.keep:
            return
        state = self._write_state(prepared.changelog)
        kept_records = [decoded.records[i] for i in prepared.keep]
        kept_events = [decoded.items[i] for i in prepared.keep]
        part = ScoringPart(chunk.tp, kept_records, kept_events, prepared.raw, state, generation)
        await self.batcher.put(part)

    def _write_state(self, changelog: list[Outgoing]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not changelog:
            future.set_result(None)
            return future
        history = self.features.history

        def written(report: Delivered) -> None:
            if report.failures:
                self._fail(EmitError(f"history changelog write failed: {report.failures[0][1]}"))
                return
            history.changelog_written(report.offsets)
            future.set_result(None)

        self.emitter.send(changelog, written, track_offsets=True)
        return future

    def _send_dead_letters(
        self,
        tp: Hashable,
        dead: list[DeadLetter],
        generation: int,
        state: asyncio.Future[None] | None = None,
    ) -> None:
        offsets = [letter.record.offset for letter in dead]

        def delivered(report: Delivered) -> None:
            if report.failures:
                self._fail(EmitError(f"dead letter not delivered: {report.failures[0][1]}"))
                return
            self.dead_letters.delivered(dead)
            self._finish_after(state, tp, offsets, generation)

        self.emitter.send(self.dead_letters.messages(dead), delivered)

    def _finish_after(
        self,
        state: asyncio.Future[None] | None,
        tp: Hashable,
        offsets: list[int],
        generation: int,
    ) -> None:
        """Finish offsets once their chunk's history writes are durable too."""
        if state is None or state.done():
            self.flow.finish(tp, offsets, generation)
        else:
            state.add_done_callback(lambda _: self.flow.finish(tp, offsets, generation))

    # -- the model -------------------------------------------------------------------------
    async def _run(self, batch: Batch[ScoringPart]) -> Scored:
        raw = RawFeatures.concat([part.raw for part in batch.parts])
        return await self.inference.score(raw)

    def _deliver(self, batch: Batch[ScoringPart], result: Scored | Exception) -> None:
        """Emit a batch's scores (and its poison events' dead letters), in batch order."""
        metrics = self.metrics
        metrics.batch_size.observe(batch.size)
        metrics.batch_wait.observe(batch.waited)
        if isinstance(result, Exception):
            log.error("model failed for a whole batch of %d: %r", batch.size, result)
            failures: dict[int, Exception] = dict.fromkeys(range(batch.size), result)
            scores = np.full(batch.size, np.nan, dtype=np.float32)
        else:
            metrics.model_latency.observe(result.seconds)
            self._compute.inc(result.seconds)
            failures, scores = result.failures, result.scores
        scored_ts = time.time()
        start = 0
        for part in batch.parts:
            stop = start + len(part)
            if part.generation == self.flow.generation:  # else abandoned: re-read later
                self._emit_part(part, scores[start:stop], failures, start, scored_ts)
            start = stop

    def _emit_part(
        self,
        part: ScoringPart,
        scores: np.ndarray,
        failures: dict[int, Exception],
        start: int,
        scored_ts: float,
    ) -> None:
        dead: list[DeadLetter] = []
        messages: list[Outgoing] = []
        ok_timestamps: list[float] = []
        topic = self.scores_topic
        name, version = self._model_name, self._model_version
        dumps = orjson.dumps
        for i, (record, event, score) in enumerate(
            zip(part.records, part.events, scores.tolist(), strict=True)
        ):
            failure = failures.get(start + i) if failures else None
            if failure is not None:
                dead.append(DeadLetter(record, "model", type(failure).__name__, str(failure)))
                continue
            value = dumps(
                {
                    "event_id": event["event_id"],
                    "entity_id": event["entity_id"],
                    "score": score,
                    "model": name,
                    "model_version": version,
                    "degraded": False,
                    "route": "primary",
                    "event_ts": event["ts"],
                    "scored_ts": scored_ts,
                    "source": {
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                    },
                }
            )
            messages.append(Outgoing(topic, record.key, value))
            ok_timestamps.append(record.timestamp or 0)
        if dead:
            self._send_dead_letters(part.tp, dead, part.generation, part.state)
        if not messages:
            return
        offsets = [
            record.offset
            for i, record in enumerate(part.records)
            if not failures or (start + i) not in failures
        ]
        stamps = np.asarray(ok_timestamps, dtype=np.float64) / 1000.0

        def delivered(report: Delivered) -> None:
            if report.failures:
                self._fail(EmitError(f"score not delivered: {report.failures[0][1]}"))
                return
            self.metrics.events.labels("scored").inc(len(offsets))
            self._scores_counter.inc(len(offsets))
            self.metrics.end_to_end.observe_many(report.acked_at - stamps)
            self._finish_after(part.state, part.tp, offsets, part.generation)

        self.emitter.send(messages, delivered)

    def _fail(self, exc: BaseException) -> None:
        log.error("%s", exc)
        self._on_fatal(exc)
