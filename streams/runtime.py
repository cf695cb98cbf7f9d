"""What a worker builds when it starts, and what it reports to health checks.

Built in the Faust app's start hook, before the consumer fetches anything:
topics are checked, the producer started, the model loaded and warmed on its
device, then the pipelines are attached to the bulk consumer.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from confluent_kafka import OFFSET_BEGINNING

from models.execution import ExecutionOptions
from schemas.rollout import PlanError, RolloutPlan
from streams.errors import BrokerError, ConfigError
from streams.kafka.bulk import BulkConsumer, Sink
from streams.kafka.emit import Emitter, producer_size_config
from streams.kafka.flow import Flow
from streams.kafka.tables import TableState
from streams.kafka.topics import Cluster, prepare_topics
from streams.kafka.transactions import ExactlyOnce, TransactionalEmitter
from streams.metrics import Metrics
from streams.pipeline.declare import Pipeline
from streams.pipeline.loader import load_pipeline
from streams.pipeline.models import load_model
from streams.rollout.control import ensure_control_topic, read_plan_and_end
from streams.rollout.plans import Models, PlanFollower
from streams.scoring.agent import ScoringPipeline
from streams.scoring.deadletters import DeadLetterSink
from streams.scoring.declared import DeclaredIntake
from streams.scoring.inference import Inference, resolve_device
from streams.scoring.ladder import BreakerState, Ladder
from streams.scoring.profiles import FeaturePipeline
from streams.scoring.router import Deployment
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Allocations between young-generation collections. The hot path makes a few short-lived
#: objects per event; at the default (700) it collects every few hundred events.
GC_YOUNG_THRESHOLD = 5_000


def settle_heap() -> None:
    """Keep the garbage collector off the start-up heap once everything is loaded.

    Torch, Faust and the models leave a large, permanent heap that every full
    collection would walk again; frozen, it is skipped (the practice CPython
    documents for servers). Measured on the drain benchmark, this cut the time
    spent in the collector from about 2 s to 0.4 s per 400k events.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def served_pipeline(settings: Settings) -> Pipeline:
    """The pipeline the worker serves (``STREAMSCORE_PIPELINE``)."""
    return load_pipeline(settings.pipeline)


def served_model(settings: Settings, pipeline: Pipeline) -> str:
    """The primary when no plan names one: ``STREAMSCORE_MODEL``, else the pipeline's own."""
    ref = settings.model or pipeline.model
    if ref is None:
        raise ConfigError(
            f"pipeline {pipeline.name!r} names no default model: set STREAMSCORE_MODEL"
        )
    return ref


def for_pipeline(settings: Settings, pipeline: Pipeline) -> Settings:
    """The settings as a worker of ``pipeline`` reads them: its own fallback model unless
    ``STREAMSCORE_FALLBACK_MODEL`` names one (or, empty, none)."""
    if "fallback_model" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"fallback_model": pipeline.fallback})


def program_loader(
    pipeline: Pipeline, execution: ExecutionOptions | None = None
) -> Callable[[Path, torch.device], Inference]:
    """Loads a model of ``pipeline``: its format, and its inputs checked against the features."""

    def load(path: Path, device: torch.device) -> Inference:
        return Inference(load_model(pipeline, path, device, execution))

    return load


class Runtime:
    """The worker's pipeline objects and health."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.pipeline = served_pipeline(settings)
        settings = for_pipeline(settings, self.pipeline)
        self.settings = settings
        self.metrics = metrics or Metrics.create()
        self.flow = Flow(settings.max_in_flight, self.metrics)
        self.cluster: Cluster | None = None
        self.emitter: Emitter | TransactionalEmitter | None = None
        self.exactly_once: ExactlyOnce | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.plans: PlanFollower | None = None
        self.scoring: ScoringPipeline | None = None
        self.features: FeaturePipeline | None = None
        self.failure: BaseException | None = None
        self.started = False

    async def start(
        self,
        *,
        consumer: BulkConsumer,
        profiles_table: Any,
        history_table: Any,
        event_sink: Sink,
        feature_sink: Sink,
        on_error: Callable[[BaseException], None],
    ) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        self.cluster = await loop.run_in_executor(None, prepare_topics, settings)

        await loop.run_in_executor(None, ensure_control_topic, settings)
        plan, plan_error, follow_from = await loop.run_in_executor(None, _read_plan, settings)
        device = resolve_device(settings.device)
        served = self.pipeline
        models = Models(
            settings,
            device,
            self.metrics,
            program_loader(served, settings.execution()),
            served_model(settings, served),
        )
        self.plans = PlanFollower(settings, self.metrics, models, self._install)
        deployment = await self.plans.start(plan, plan_error)

        emitter: Emitter | TransactionalEmitter
        limits = self.cluster.limits
        if settings.processing_guarantee == "exactly_once":
            emitter = TransactionalEmitter(
                {**settings.kafka_client_config(), **producer_size_config(limits.dead_letters)},
                app_id=settings.app_id,
                on_error=on_error,
            )
            emitter.start(loop)
            self.exactly_once = ExactlyOnce(
                emitter,
                self.flow,
                group_id=settings.app_id,
                interval=settings.commit_interval_ms / 1000.0,
                drain_timeout=settings.drain_timeout_ms / 1000.0,
                on_error=on_error,
            )
            consumer.exactly_once = self.exactly_once
            self._tasks.append(loop.create_task(self.exactly_once.run()))
        else:
            emitter = Emitter(
                settings.kafka_client_config(),
                client_id=f"{settings.app_id}-emitter",
                max_queued=8 * settings.max_in_flight,
                delivery_timeout_ms=settings.delivery_timeout_ms,
                retries_before_stall=settings.emit_retries,
                max_message_bytes=limits.dead_letters,
            )
            emitter.on_stall = lambda reason: self.flow.hold("emit", reason)
            emitter.on_retry = self.metrics.emit_retries.inc
            emitter.on_acked = self.metrics.ack_latency.observe
            emitter.start(loop)
        self.emitter = emitter

        def fatal(exc: BaseException) -> None:
            """An output that can never be delivered: hold intake, never commit past it."""
            log.error("intake stopped for good: %s", exc)
            self.flow.hold("stuck", f"stopped: {exc}")

        dead_letters = DeadLetterSink(
            settings.dlq_topic,
            settings.app_id,
            self.metrics,
            emitter=emitter,
            max_bytes=limits.dead_letters,
            on_fatal=fatal,
        )
        profiles = TableState(profiles_table)
        intake = DeclaredIntake(served, profiles, TableState(history_table))
        self.scoring = ScoringPipeline(
            flow=self.flow,
            intake=intake,
            deployment=deployment,
            emitter=emitter,
            dead_letters=dead_letters,
            metrics=self.metrics,
            scores_topic=settings.scores_topic,
            shadow_topic=settings.shadow_topic,
            shadow_max_pending=settings.shadow_max_pending,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000.0,
            on_fatal=fatal,
        )
        self.features = FeaturePipeline(
            flow=self.flow,
            profiles=profiles,
            emitter=emitter,
            dead_letters=dead_letters,
            metrics=self.metrics,
            on_fatal=fatal,
        )
        self.scoring.after_batch = self.plans.check_canary
        self.scoring.start()
        settle_heap()
        consumer.drain_timeout = settings.drain_timeout_ms / 1000.0
        consumer.fetch_max_wait_ms = settings.fetch_max_wait_ms or (
            10 if self.cluster.embedded else 500
        )
        consumer.client_config = settings.kafka_client_config()
        if self.cluster.embedded or self.exactly_once is not None:
            consumer.measure_ends_with = settings.kafka_client_config()
        consumer.attach(
            self.flow,
            {settings.events_topic: event_sink, settings.features_topic: feature_sink},
        )
        self.plans.follow(follow_from)
        self.started = True

    def _install(self, deployment: Deployment) -> None:
        """Swap the models in: the next batch is scored with them."""
        if self.scoring is not None:
            self.scoring.deployment = deployment

    @property
    def ladder(self) -> Ladder | None:
        """The primary's ladder (and breaker) now in use."""
        if self.plans is None or self.plans.current is None:
            return None
        return self.plans.current.ladder

    def problems(self, *, tables_ready: bool) -> list[str]:
        """Why the worker is not ready (empty when it is)."""
        reasons = []
        if not self.started:
            reasons.append("model not loaded and warmed up yet")
        if not tables_ready:
            reasons.append("table recovery in progress")
        if self.failure is not None:
            reasons.append(f"failed: {self.failure}")
        if self.scoring is not None and self.scoring.batcher.failure is not None:
            reasons.append(f"batcher failed: {self.scoring.batcher.failure}")
        if self.emitter is not None and self.emitter.stalled is not None:
            reasons.append(f"outputs are not getting through: {self.emitter.stalled}")
        if "stuck" in self.flow.holds:
            reasons.append(self.flow.holds["stuck"])
        if self.ladder is not None and self.ladder.breaker.state is not BreakerState.CLOSED:
            reasons.append(
                f"model circuit breaker {self.ladder.breaker.state.value}: scores are degraded"
            )
        return reasons

    def refresh_gauges(self) -> None:
        """Gauges that depend on time passing (read when /metrics is scraped)."""
        if self.ladder is not None:
            closed = self.ladder.breaker.state is BreakerState.CLOSED
            self.metrics.breaker_open.set(0 if closed else 1)

    async def close(self) -> None:
        """After the consumer drained and committed: stop the batcher, flush, free the model."""
        if self.exactly_once is not None:
            await self.exactly_once.stop()
        for task in self._tasks:
            task.cancel()
        if self.scoring is not None:
            await self.scoring.stop()
        if self.emitter is not None:
            await self.emitter.close()
        if self.plans is not None:
            self.plans.close()


def _read_plan(settings: Settings) -> tuple[RolloutPlan | None, str | None, int]:
    """The plan at start (or why it is unusable), and the offset to follow the topic from."""
    try:
        value, end = read_plan_and_end(settings)
    except BrokerError as exc:
        log.warning("could not read the rollout plan at start (%s); following the topic", exc)
        return None, None, OFFSET_BEGINNING
    if value is None:
        return None, None, end
    try:
        return RolloutPlan.from_bytes(value), None, end
    except PlanError as exc:
        return None, str(exc), end
