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
from operator import attrgetter
from typing import Any, Self

import numpy as np
import numpy.typing as npt
from faust.types import TP
from prometheus_client import Counter

from models.inputs import ModelInput
from schemas.scores import ScoreBatch, ScoreEncoder
from streams.errors import EmitError, InferenceError
from streams.kafka.bulk import Chunk
from streams.kafka.emit import Delivered, Emitter, Keyed, Messages, Outgoing
from streams.kafka.flow import Flow
from streams.kafka.transactions import TransactionalEmitter
from streams.metrics import Metrics
from streams.scoring.batcher import Batch, MicroBatcher
from streams.scoring.deadletters import DeadLetterSink
from streams.scoring.decode import DeadLetter, Record
from streams.scoring.inference import Inference, ScoringModel
from streams.scoring.intake import IntakeStage
from streams.scoring.ladder import ROUTE_NAMES, Outcome, Route
from streams.scoring.router import Deployment, route_batch

log = logging.getLogger(__name__)

_KEY, _TOPIC = attrgetter("key"), attrgetter("topic")
_PARTITION, _OFFSET = attrgetter("partition"), attrgetter("offset")

#: What a score from the last rung of the ladder names as its model.
DEFAULT_MODEL, DEFAULT_VERSION = "default", "1"


@dataclass(frozen=True, slots=True)
class ScoringPart:
    """Valid events of one chunk (each partition's in offset order), with their model input."""

    records: list[Record]
    events: list[Any]  # validated events (routing rules read them)
    ids: list[str]  # each event's id, entity and time, for its score
    entities: list[str]
    times: list[float]
    raw: ModelInput
    state: asyncio.Future[None]  # resolved when the chunk's history writes are durable
    generation: int
    fetched_at: float  # wall clock when the chunk was fetched
    stamps: npt.NDArray[np.float64]  # each event's record timestamp, epoch seconds (0: none)
    degraded: npt.NDArray[np.bool_]  # each event's features partly imputed (unreadable state)

    def __len__(self) -> int:
        return len(self.records)

    def split(self, n: int) -> tuple[Self, Self]:
        cls = type(self)
        head = cls(
            self.records[:n], self.events[:n], self.ids[:n], self.entities[:n], self.times[:n],
            self.raw.take(0, n), self.state, self.generation, self.fetched_at, self.stamps[:n],
            self.degraded[:n],
        )  # fmt: skip
        tail = cls(
            self.records[n:], self.events[n:], self.ids[n:], self.entities[n:], self.times[n:],
            self.raw.take(n, len(self)), self.state, self.generation, self.fetched_at,
            self.stamps[n:], self.degraded[n:],
        )  # fmt: skip
        return head, tail


class ScoringPipeline:
    """Decode, featurize, batch, infer and emit the events of every owned partition."""

    def __init__(
        self,
        *,
        flow: Flow,
        intake: IntakeStage,
        deployment: Deployment,
        emitter: Emitter | TransactionalEmitter,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        scores_topic: str,
        shadow_topic: str,
        shadow_max_pending: int,
        max_batch_size: int,
        max_wait_s: float,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.flow = flow
        self.intake = intake
        self.deployment = deployment  # swapped whole by the plan follower, between batches
        self.emitter = emitter
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.scores_topic = scores_topic
        self.shadow_topic = shadow_topic
        self.shadow_max_pending = shadow_max_pending
        self._shadow_pending = 0  # events handed to the shadow model, not yet scored
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self.after_batch: Callable[[], None] = lambda: None  # e.g. the canary watch
        self._on_fatal = on_fatal
        self.batcher: MicroBatcher[ScoringPart, Scoring] = MicroBatcher(
            self._run,
            self._deliver,
            max_size=max_batch_size,
            max_wait=max_wait_s,
            capacity=max(flow.max_in_flight, max_batch_size),
        )
        flow.on_drain(self.batcher.drain)

        self._producers: dict[tuple[str, str | None], _Producer] = {}
        # The usual series exist from the start, at 0 (dashboards and alerts see them).
        self._producer("primary", deployment.primary)
        if deployment.ladder.fallback is not None:
            self._producer("fallback", deployment.ladder.fallback)
        self._producer("default", None)
        # The transactional emitter routes each message by its source partition.
        self._per_source = isinstance(emitter, TransactionalEmitter)

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        if self._shadow_tasks:
            await asyncio.wait(list(self._shadow_tasks), timeout=5.0)

    def _producer(self, route: str, inference: Inference | None) -> _Producer:
        """What scores of ``route`` by ``inference`` say, and their counters (cached)."""
        key = (route, inference.model.ref if inference is not None else None)
        found = self._producers.get(key)
        if found is not None and (inference is None or found.model is inference.model):
            return found
        metrics = self.metrics
        degraded = route in ("fallback", "default")
        model = inference.model if inference is not None else None
        name = model.name if model is not None else DEFAULT_MODEL  # None: the default score
        version = model.version if model is not None else DEFAULT_VERSION
        made = _Producer(
            name, version, route, degraded, metrics.scores.labels(name, version, route),
            ScoreEncoder(name, version, degraded, route), ScoreEncoder(name, version, True, route),
            model,
        )  # fmt: skip
        self._producers[key] = made
        return made

    def _producers_for(self, outcome: Outcome) -> list[_Producer | None]:
        """The producer of each route code of a batch (None: no score comes from it)."""
        producers: list[_Producer | None] = []
        for code, inference in enumerate(outcome.models):
            if code == Route.FAILED or (inference is None and code != Route.DEFAULT):
                producers.append(None)
            else:
                route = ROUTE_NAMES[code] if code < Route.RULES else "primary"
                producers.append(self._producer(route, inference))
        return producers

    # -- intake ----------------------------------------------------------------------------
    async def process(self, chunk: Chunk) -> None:
        """Take one fetched chunk of the events topic through to the batcher."""
        flow = self.flow
        records = flow.admit_chunk(chunk.parts, chunk.epoch)
        if not records:
            return  # nothing new, or fetched before a drain: it will be read again
        generation = flow.generation
        intake = self.intake.prepare(records)
        state = self._write_state(intake.changelog, records[0].topic)
        if intake.dead:  # finished once the chunk's state is durable too
            self._send_dead_letters(intake.dead, generation, [state])
        kept_records = intake.records
        if not kept_records or intake.inputs is None:
            return
        self.metrics.feature_read.observe(intake.read_seconds)
        for reason, count in intake.degraded_reasons.items():
            self.metrics.degraded_features.labels(reason).inc(count)
        stamps = np.fromiter(
            (record.timestamp or 0 for record in kept_records), np.float64, len(kept_records)
        )
        stamps /= 1000.0
        oldest = float(stamps.min())
        if oldest > 0:  # every record carries a timestamp (producers' clocks may run ahead)
            self.metrics.arrival.observe_many(np.maximum(chunk.fetched_at - stamps, 0.0))
        part = ScoringPart(
            kept_records, intake.events, intake.ids, intake.entities, intake.times, intake.inputs,
            state, generation, chunk.fetched_at, stamps, intake.degraded,
        )  # fmt: skip
        await self.batcher.put(part, age=time.time() - oldest if oldest > 0 else 0.0)

    def _write_state(self, changelog: list[Outgoing], source_topic: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not changelog:
            future.set_result(None)
            return future
        history = self.intake.state

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
        self.dead_letters.send(dead, lambda: self._finish_after(states, records, generation))

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
    async def _run(self, batch: Batch[ScoringPart]) -> Scoring:
        deployment = self.deployment  # one set of models for the whole batch
        parts = batch.parts
        raw = parts[0].raw if len(parts) == 1 else type(parts[0].raw).concat([p.raw for p in parts])
        record_times = _stamps(parts)
        events = entities = None
        if deployment.rules:
            events = [event for part in parts for event in part.events]
        if deployment.canary is not None:
            entities = [entity for part in parts for entity in part.entities]
        outcome = await route_batch(deployment, raw, record_times, entities, events)
        return Scoring(outcome, raw, deployment)

    def _deliver(self, batch: Batch[ScoringPart], scoring: Scoring | Exception) -> None:
        """Emit a batch's scores (and its poison events' dead letters), in batch order."""
        metrics = self.metrics
        metrics.batch_size.observe(batch.size)
        metrics.batch_wait.observe(batch.waited)
        if isinstance(scoring, Exception):  # a bug in the router: dead-letter, never drop
            log.error("scoring failed for a whole batch of %d: %r", batch.size, scoring)
            result = Outcome.unscored(batch.size)
            result.failures.update(dict.fromkeys(range(batch.size), scoring))
            raw, deployment = None, None
        else:
            result, raw, deployment = scoring.outcome, scoring.raw, scoring.deployment
        for key, seconds in result.seconds.items():
            metrics.model_latency.observe(seconds)
            metrics.model_compute.labels(*key).inc(seconds)
        for (name, version, _), count in result.timeouts.items():
            metrics.model_timeouts.labels(name, version).inc(count)
        if result.deadline_missed:
            metrics.deadline_missed.inc(result.deadline_missed)
        if result.escalation_failures:
            metrics.escalation_failures.inc(result.escalation_failures)
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
            raw = raw.select(rows) if raw is not None else None
        self._emit(parts, result, generation, time.time())
        if deployment is not None and raw is not None and deployment.shadow is not None:
            self._shadow(deployment.shadow, parts, result, raw)
        self.after_batch()

    def _emit(
        self, parts: list[ScoringPart], outcome: Outcome, generation: int, scored_ts: float
    ) -> None:
        dead: list[DeadLetter] = []
        batch = ScoreBatch()
        add = batch.add
        keys: list[bytes | None] = []
        sources: list[Record] = []
        producers = self._producers_for(outcome)
        counts = [0] * len(producers)  # per route code
        encoders = [p.encoder if p is not None else None for p in producers]
        imputed = [p.encoder_degraded if p is not None else None for p in producers]
        routes = outcome.route.tolist()
        scores = outcome.scores.tolist()
        scored_per_part: list[int] = []
        degraded_rows = 0  # scored on partly imputed features by a rung that is not degraded
        row = 0
        one_rung = len(set(routes)) == 1 and routes[0] != Route.FAILED
        whole = one_rung and not any(part.degraded.any() for part in parts)
        if whole:  # the usual batch: one rung scored every event, none on imputed state
            route = routes[0]
            for part in parts:
                records = part.records
                batch.extend(
                    encoders[route], part.ids, part.entities, scores[row : row + len(part)],
                    part.times, scored_ts, map(_TOPIC, records), map(_PARTITION, records),
                    map(_OFFSET, records),
                )  # fmt: skip
                keys.extend(map(_KEY, records))
                sources.extend(records)
                scored_per_part.append(len(part))
                row += len(part)
            counts[route] = row
        for part in () if whole else parts:  # failures, several rungs, or imputed state
            before = len(sources)
            flags = part.degraded.tolist() if part.degraded.any() else None
            rows = zip(part.records, part.ids, part.entities, part.times, strict=True)
            for index, (record, event_id, entity, event_ts) in enumerate(rows):
                route = routes[row]
                if route == Route.FAILED:
                    failure = outcome.failures.get(row) or InferenceError("no score")
                    dead.append(DeadLetter(record, "model", type(failure).__name__, str(failure)))
                    row += 1
                    continue
                encoder = encoders[route]  # a code that scored has an encoder
                if flags is not None and flags[index]:
                    encoder = imputed[route]
                    degraded_rows += not producers[route].degraded
                add(
                    encoder, event_id, entity, scores[row], event_ts, scored_ts, record.topic,
                    record.partition, record.offset,
                )  # fmt: skip
                keys.append(record.key)
                sources.append(record)
                counts[route] += 1
                row += 1
            scored_per_part.append(len(sources) - before)
        states = list({id(part.state): part.state for part in parts}.values())
        if dead:
            self._send_dead_letters(dead, generation, states)
        if not sources:
            return
        # A score is never too large for a broker, so it needs no cutting as dead letters
        # do: its only unbounded fields, the event id and entity id, come from an event of
        # at most 64 KiB, and JSON writes a string in no more bytes than it was read from
        # (what was escaped in the event is escaped alike, the rest is copied), so a score
        # is at most 64 KiB plus a few hundred bytes of fixed fields, with a key as long as
        # the event's. Should a broker refuse one all the same, its event is dead-lettered
        # (stage ``emit``, ``_emit_failed``), and the worker goes on.
        messages = Keyed(self.scores_topic, keys, batch.encode())
        stamps = _stamps(parts)
        emitted = outcome.route != Route.FAILED
        if not emitted.all():
            stamps = stamps[emitted]

        def delivered(report: Delivered) -> None:
            ok = sources
            if report.failures:  # the broker will never take these: their events are dead letters
                ok = self._emit_failed(messages, sources, report, generation, states)
            events = self.metrics.events
            scored = degraded = 0
            for producer, count in zip(producers, counts, strict=True):
                if count and producer is not None:
                    producer.scores.inc(count)
                    if producer.degraded:
                        degraded += count
                    else:
                        scored += count
            scored -= degraded_rows
            degraded += degraded_rows
            events.labels("scored").inc(scored)
            if degraded:
                events.labels("degraded").inc(degraded)
            self.metrics.end_to_end.observe_many(report.acked_at - stamps)
            self._finish_after(states, ok, generation)

        routing = _record_sources(sources) if self._per_source else None
        self.emitter.send(messages, delivered, source=routing)
        fetched = np.fromiter((part.fetched_at for part in parts), np.float64, len(parts))
        self.metrics.processing.observe_many(
            scored_ts - fetched, np.asarray(scored_per_part, dtype=np.int64)
        )

    # -- the shadow ------------------------------------------------------------------------
    def _shadow(
        self,
        shadow: Inference,
        parts: list[ScoringPart],
        outcome: Outcome,
        raw: ModelInput,
    ) -> None:
        """Score what was just emitted with the shadow model too, on its own budget.

        Runs after the batch's scores are handed to the producer, on the shadow
        model's own thread, so it never delays or changes them. Its outputs do
        not hold offsets back: a crash can lose shadow scores, never scores.
        Shed (and counted) when intake is paused or too much shadow work waits.
        """
        rows = np.flatnonzero(outcome.route != Route.FAILED).tolist()
        if not rows:
            return
        shed = self.metrics.shadow_shed
        if self.flow.paused or self._shadow_pending + len(rows) > self.shadow_max_pending:
            shed.labels("overload").inc(len(rows))
            return
        records = [r for part in parts for r in part.records]
        ids = [i for part in parts for i in part.ids]
        entities = [e for part in parts for e in part.entities]
        times = [t for part in parts for t in part.times]
        primary_scores = outcome.scores[rows]
        subset = raw if len(rows) == len(raw) else raw.select(rows)
        self._shadow_pending += len(rows)
        timeout = self.deployment.ladder.timeout

        async def run() -> None:
            try:
                scored = await shadow.score_within(subset, timeout)
            except Exception as exc:  # the shadow's failures never touch the primary path
                log.warning("shadow model %s failed: %r", shadow.model.ref, exc)
                shed.labels("failed").inc(len(rows))
                return
            finally:
                self._shadow_pending -= len(rows)
            model = shadow.model
            self.metrics.model_compute.labels(model.name, model.version, str(model.device)).inc(
                scored.seconds
            )
            producer = self._producer("shadow", shadow)
            encoder = producer.encoder
            batch = ScoreBatch()
            keys: list[bytes | None] = []
            sources: list[Record] = []
            diffs: list[float] = []
            scored_ts = time.time()
            values = scored.scores.tolist()
            for position, row in enumerate(rows):
                if position in scored.failures:
                    continue
                record = records[row]
                batch.add(
                    encoder, ids[row], entities[row], values[position], times[row], scored_ts,
                    record.topic, record.partition, record.offset,
                )  # fmt: skip
                keys.append(record.key)
                sources.append(record)
                diffs.append(abs(values[position] - float(primary_scores[position])))
            if scored.failures:
                shed.labels("failed").inc(len(scored.failures))
            if diffs:
                self.metrics.shadow_abs_diff.observe_many(np.asarray(diffs))

            messages = Keyed(self.shadow_topic, keys, batch.encode())

            def delivered(report: Delivered) -> None:
                producer.scores.inc(len(messages) - len(report.failures))

            if messages:
                routing = _record_sources(sources) if self._per_source else None
                self.emitter.send(messages, delivered, source=routing)

        task = asyncio.get_running_loop().create_task(run())
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    def _emit_failed(
        self,
        messages: Messages,
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
class Scoring:
    """A scored batch, with its model input and the models that scored it (for the shadow)."""

    outcome: Outcome
    raw: ModelInput
    deployment: Deployment


@dataclass(frozen=True, slots=True)
class _Producer:
    """What a score says about the rung that produced it, and that rung's counters."""

    name: str
    version: str
    route: str
    degraded: bool
    scores: Counter
    encoder: ScoreEncoder
    encoder_degraded: ScoreEncoder  # for an event scored on partly imputed features
    model: ScoringModel | None  # the exact model loaded (a reloaded one gets a new producer)


def _starts(parts: Sequence[ScoringPart]) -> list[tuple[ScoringPart, int]]:
    """Each part with the row its events start at in the batch."""
    out, start = [], 0
    for part in parts:
        out.append((part, start))
        start += len(part)
    return out


def _stamps(parts: Sequence[ScoringPart]) -> npt.NDArray[np.float64]:
    """The record timestamps of the parts' events, in order (epoch seconds)."""
    return parts[0].stamps if len(parts) == 1 else np.concatenate([p.stamps for p in parts])


def _record_sources(records: Sequence[Record]) -> list[TP]:
    return [TP(record.topic, record.partition) for record in records]
