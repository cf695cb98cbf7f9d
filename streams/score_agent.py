"""Event to score, top to bottom: the work of the scoring agent, one fetched chunk at a time.

    chunk of records (one partition)
      -> admit (flow.py: register offsets; stale chunks dropped)
      -> decode + validate (decode.py)          bad ones -> dead letters
      -> features + history (features.py)       unreadable state -> dead letters
      -> micro-batcher (batcher.py)             events of all partitions gather
      -> model, off the loop (ladder.py,        poison events isolated -> dead letters
           inference.py)                        failures and deadlines -> fallback, default
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np
from faust.types import TP
from prometheus_client import Counter

from models.featurize import RawFeatures
from schemas.events import EventRecord
from schemas.scores import ScoreEncoder
from streams.batcher import Batch, MicroBatcher
from streams.bulk import Chunk
from streams.deadletters import DeadLetterSink
from streams.decode import DeadLetter, Record, decode_events
from streams.emit import Delivered, Emitter, Outgoing
from streams.errors import EmitError, InferenceError
from streams.features import FeatureStage
from streams.flow import Flow
from streams.inference import Inference
from streams.ladder import Ladder, Outcome, Route
from streams.metrics import Metrics
from streams.transactions import TransactionalEmitter

log = logging.getLogger(__name__)

#: What a score from the last rung of the ladder names as its model.
DEFAULT_MODEL, DEFAULT_VERSION = "default", "1"


@dataclass(frozen=True, slots=True)
class ScoringPart:
    """Valid events of one chunk (each partition's in offset order), with their model input."""

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
            self.records[:n], self.events[:n], self.raw.take(0, n), self.state, self.generation
        )
        tail = cls(
            self.records[n:], self.events[n:], self.raw.take(n, len(self)), self.state,
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
        ladder: Ladder,
        emitter: Emitter | TransactionalEmitter,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        scores_topic: str,
        max_batch_size: int,
        max_wait_s: float,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.flow = flow
        self.features = features
        self.ladder = ladder
        self.emitter = emitter
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.scores_topic = scores_topic
        self._on_fatal = on_fatal
        self.batcher: MicroBatcher[ScoringPart, Outcome] = MicroBatcher(
            self._run,
            self._deliver,
            max_size=max_batch_size,
            max_wait=max_wait_s,
            capacity=max(flow.max_in_flight, max_batch_size),
        )
        flow.on_drain(self.batcher.drain)

        def producer(inference: Inference | None, route: str) -> _Producer:
            if inference is None:  # the default score: no model, no compute
                return _Producer(
                    DEFAULT_MODEL, DEFAULT_VERSION, route, True,
                    metrics.scores.labels(DEFAULT_MODEL, DEFAULT_VERSION, route),
                    metrics.model_compute.labels(DEFAULT_MODEL, DEFAULT_VERSION, "none"),
                    ScoreEncoder(DEFAULT_MODEL, DEFAULT_VERSION, True, route),
                )  # fmt: skip
            model = inference.model
            return _Producer(
                model.name, model.version, route, route != "primary",
                metrics.scores.labels(model.name, model.version, route),
                metrics.model_compute.labels(model.name, model.version, str(model.device)),
                ScoreEncoder(model.name, model.version, route != "primary", route),
            )  # fmt: skip

        fallback = ladder.fallback
        self._producers = (
            producer(ladder.primary, "primary"),
            producer(fallback, "fallback") if fallback is not None else producer(None, "fallback"),
            producer(None, "default"),
        )
        self._producers_by_name = {p.name: p for p in self._producers[:2]}
        # The transactional emitter routes each message by its source partition.
        self._per_source = isinstance(emitter, TransactionalEmitter)

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    # -- intake ----------------------------------------------------------------------------
    async def process(self, chunk: Chunk) -> None:
        """Take one fetched chunk of the events topic through to the batcher."""
        flow = self.flow
        records = flow.admit_chunk(chunk.parts, chunk.epoch)
        if not records:
            return  # nothing new, or fetched before a drain: it will be read again
        generation = flow.generation
        decoded = decode_events(records)
        if decoded.dead:
            self._send_dead_letters(decoded.dead, generation)
        if not decoded.items:
            return
        prepared = self.features.prepare(decoded.records, decoded.items)
        if prepared.failed:
            dead = [
                DeadLetter(decoded.records[i], "features", type(exc).__name__, str(exc))
                for i, exc in sorted(prepared.failed.items())
            ]
            self._send_dead_letters(dead, generation)
        if not prepared.keep:
            return
        state = self._write_state(prepared.changelog, decoded.records[0].topic)
        if len(prepared.keep) == len(decoded.records):
            kept_records, kept_events = decoded.records, decoded.items
        else:
            kept_records = [decoded.records[i] for i in prepared.keep]
            kept_events = [decoded.items[i] for i in prepared.keep]
        oldest = min(record.timestamp or 0 for record in kept_records) / 1000.0
        part = ScoringPart(kept_records, kept_events, prepared.raw, state, generation)
        await self.batcher.put(part, age=time.time() - oldest if oldest else 0.0)

    def _write_state(self, changelog: list[Outgoing], source_topic: str) -> asyncio.Future[None]:
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

        # A state change's source is the event partition of the same number (co-partitioned).
        sources = (
            [TP(source_topic, m.partition or 0) for m in changelog] if self._per_source else None
        )
        self.emitter.send(changelog, written, track_offsets=True, source=sources)
        return future

    def _send_dead_letters(
        self,
        dead: list[DeadLetter],
        generation: int,
        states: Sequence[asyncio.Future[None]] = (),
    ) -> None:
        records = [letter.record for letter in dead]

        def delivered(report: Delivered) -> None:
            if report.failures:
                self._fail(EmitError(f"dead letter not delivered: {report.failures[0][1]}"))
                return
            self.dead_letters.delivered(dead)
            self._finish_after(states, records, generation)

        sources = _record_sources(records) if self._per_source else None
        self.emitter.send(self.dead_letters.messages(dead), delivered, source=sources)

    def _finish_after(
        self, states: Sequence[asyncio.Future[None]], records: list[Record], generation: int
    ) -> None:
        """Finish offsets once their chunks' history writes are durable too."""
        pending = [state for state in states if not state.done()]
        if not pending:
            self.flow.finish_records(records, generation)
            return
        gathered = asyncio.gather(*pending)
        gathered.add_done_callback(lambda _: self.flow.finish_records(records, generation))

    # -- the model -------------------------------------------------------------------------
    async def _run(self, batch: Batch[ScoringPart]) -> Outcome:
        raw = RawFeatures.concat([part.raw for part in batch.parts])
        record_times = np.fromiter(
            (r.timestamp or 0 for part in batch.parts for r in part.records),
            dtype=np.float64,
            count=batch.size,
        )
        return await self.ladder.score(raw, record_times / 1000.0)

    def _deliver(self, batch: Batch[ScoringPart], result: Outcome | Exception) -> None:
        """Emit a batch's scores (and its poison events' dead letters), in batch order."""
        metrics = self.metrics
        metrics.batch_size.observe(batch.size)
        metrics.batch_wait.observe(batch.waited)
        if isinstance(result, Exception):  # a bug in the ladder: dead-letter, never drop
            log.error("scoring failed for a whole batch of %d: %r", batch.size, result)
            result = Outcome(
                np.full(batch.size, np.nan, dtype=np.float64),
                np.full(batch.size, Route.FAILED, dtype=np.int8),
                dict.fromkeys(range(batch.size), result),
            )
        for name, seconds in result.seconds.items():
            metrics.model_latency.observe(seconds)
            self._producers_by_name[name].compute.inc(seconds)
        if result.deadline_missed:
            metrics.deadline_missed.inc(result.deadline_missed)
        generation = self.flow.generation
        parts = [part for part in batch.parts if part.generation == generation]
        if len(parts) != len(batch.parts):  # abandoned parts are re-read later, never emitted
            if not parts:
                return
            keep = {id(part) for part in parts}
            rows = [
                row
                for part, start in _starts(batch.parts)
                if id(part) in keep
                for row in range(start, start + len(part))
            ]
            result = result.take(rows)
        self._emit(parts, result, generation, time.time())

    def _emit(
        self, parts: list[ScoringPart], outcome: Outcome, generation: int, scored_ts: float
    ) -> None:
        dead: list[DeadLetter] = []
        messages: list[Outgoing] = []
        sources: list[Record] = []
        timestamps: list[int] = []
        counts = [0, 0, 0]  # per Route: primary, fallback, default
        producers = self._producers
        topic = self.scores_topic
        encoders = [producer.encoder.encode for producer in producers]
        routes = outcome.route.tolist()
        scores = outcome.scores.tolist()
        row = 0
        for part in parts:
            for record, event in zip(part.records, part.events, strict=True):
                route = routes[row]
                if route == Route.FAILED:
                    failure = outcome.failures.get(row) or InferenceError("no score")
                    dead.append(DeadLetter(record, "model", type(failure).__name__, str(failure)))
                    row += 1
                    continue
                value = encoders[route](
                    event["event_id"], event["entity_id"], scores[row], event["ts"],
                    scored_ts, record.topic, record.partition, record.offset,
                )  # fmt: skip
                messages.append(Outgoing(topic, record.key, value))
                sources.append(record)
                timestamps.append(record.timestamp or 0)
                counts[route] += 1
                row += 1
        states = list({id(part.state): part.state for part in parts}.values())
        if dead:
            self._send_dead_letters(dead, generation, states)
        if not messages:
            return
        stamps = np.asarray(timestamps, dtype=np.float64) / 1000.0

        def delivered(report: Delivered) -> None:
            ok = sources
            if report.failures:  # the broker will never take these: their events are dead letters
                ok = self._emit_failed(messages, sources, report, generation, states)
            events = self.metrics.events
            events.labels("scored").inc(counts[Route.PRIMARY])
            degraded = counts[Route.FALLBACK] + counts[Route.DEFAULT]
            if degraded:
                events.labels("degraded").inc(degraded)
            for route, count in enumerate(counts):
                if count:
                    producers[route].scores.inc(count)
            self.metrics.end_to_end.observe_many(report.acked_at - stamps)
            self._finish_after(states, ok, generation)

        routing = _record_sources(sources) if self._per_source else None
        self.emitter.send(messages, delivered, source=routing)

    def _emit_failed(
        self,
        messages: list[Outgoing],
        sources: list[Record],
        report: Delivered,
        generation: int,
        states: Sequence[asyncio.Future[None]],
    ) -> list[Record]:
        """Dead-letter the events whose scores the broker refused for good; return the rest."""
        refused = {message.value: error for message, error in report.failures}
        dead, ok = [], []
        for message, record in zip(messages, sources, strict=True):
            error = refused.get(message.value)
            if error is None:
                ok.append(record)
            else:
                reason = f"the score could not be produced: {error.str()}"
                dead.append(DeadLetter(record, "emit", error.name(), reason))
        log.error("%d scores refused by the broker: dead-lettered", len(dead))
        self._send_dead_letters(dead, generation, states)
        return ok

    def _fail(self, exc: BaseException) -> None:
        log.error("%s", exc)
        self._on_fatal(exc)


@dataclass(frozen=True, slots=True)
class _Producer:
    """What a score says about the rung that produced it, and that rung's counters."""

    name: str
    version: str
    route: str
    degraded: bool
    scores: Counter
    compute: Counter
    encoder: ScoreEncoder


def _starts(parts: Sequence[ScoringPart]) -> list[tuple[ScoringPart, int]]:
    """Each part with the row its events start at in the batch."""
    out, start = [], 0
    for part in parts:
        out.append((part, start))
        start += len(part)
    return out


def _record_sources(records: Sequence[Record]) -> list[TP]:
    return [TP(record.topic, record.partition) for record in records]
