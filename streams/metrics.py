"""The contract's Prometheus metrics, created on an injected registry.

``Metrics.create(registry)`` gives each test its own ``CollectorRegistry``.
End-to-end, arrival and processing latency are observed once per event, so each is a
:class:`BulkHistogram`, which takes a whole numpy array per call (one
``searchsorted`` instead of thousands of locked ``observe`` calls) and is
exposed in the standard histogram format.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.deadletter import STAGES

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
MODEL_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02,
    0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_SIZE_BUCKETS: tuple[float, ...] = (
    1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 384, 512, 1024, 2048, 4096, 8192,
)  # fmt: skip
#: |primary - shadow| of one event's scores.
DIFF_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
ROLLBACK_REASONS = ("error_rate", "latency", "score_distribution")
SHED_REASONS = ("overload", "failed")
OUTCOMES = ("scored", "degraded", "dlq")
#: Why an event was scored on partly imputed state (see streams.scoring.declared).
DEGRADED_REASONS = ("state_unreadable", "profile_undecodable", "history_undecodable")


class BulkHistogram(Collector):
    """A histogram that observes arrays of values at once (thread-safe)."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(
        self, values: npt.NDArray[np.float64], weights: npt.NDArray[np.int64] | None = None
    ) -> None:
        """Observe every value once, or ``weights[i]`` times (a run of equal observations)."""
        if not len(values):
            return
        index = np.searchsorted(self._bounds, values, side="left")
        if weights is None:
            counts = np.bincount(index, minlength=len(self._counts))
            total = float(values.sum())
        else:
            counts = np.bincount(index, weights, minlength=len(self._counts)).astype(np.int64)
            total = float(values @ weights)
        with self._lock:
            self._counts += counts
            self._sum += total

    def observe(self, value: float) -> None:
        self.observe_many(np.asarray([value], dtype=np.float64))

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        buckets = [(repr(float(b)), int(c)) for b, c in zip(self._bounds, cumulative, strict=False)]
        buckets.append(("+Inf", int(cumulative[-1])))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=total
        )


@dataclass(frozen=True)
class Metrics:
    """Every metric the worker exports (names are part of the contract)."""

    registry: CollectorRegistry
    events: Counter
    dlq: Counter
    batch_size: Histogram
    batch_wait: Histogram
    model_latency: Histogram
    end_to_end: BulkHistogram
    arrival: BulkHistogram
    processing: BulkHistogram
    in_flight: Gauge
    paused_partitions: Gauge
    model_info: Gauge
    scores: Counter
    model_compute: Counter
    feature_updates: Counter
    ready: Gauge
    consumer_lag: Gauge
    deadline_missed: Counter
    breaker_open: Gauge
    emit_retries: Counter
    shadow_abs_diff: BulkHistogram
    shadow_shed: Counter
    rollbacks: Counter
    plans_applied: Counter
    plans_rejected: Counter
    escalation_failures: Counter
    dlq_cut: Counter
    degraded_features: Counter
    model_load: Gauge
    model_warmup: Gauge
    model_timeouts: Counter
    feature_read: Histogram
    ack_latency: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        registry = registry if registry is not None else CollectorRegistry()
        metrics = cls(
            registry=registry,
            events=Counter(
                "streamscore_events", "Consumed events by outcome.", ["outcome"],
                registry=registry,
            ),
            dlq=Counter(
                "streamscore_dlq", "Dead letters by stage.", ["stage"], registry=registry
            ),
            batch_size=Histogram(
                "streamscore_batch_size", "Events per model batch.",
                buckets=BATCH_SIZE_BUCKETS, registry=registry,
            ),
            batch_wait=Histogram(
                "streamscore_batch_wait_seconds",
                "How long the oldest event of a batch waited for the batch to start.",
                buckets=LATENCY_BUCKETS, registry=registry,
            ),
            model_latency=Histogram(
                "streamscore_model_latency_seconds", "Model time per batch.",
                buckets=MODEL_BUCKETS, registry=registry,
            ),
            end_to_end=BulkHistogram(
                "streamscore_end_to_end_latency_seconds",
                "Record timestamp to score acknowledged by the broker.",
                LATENCY_BUCKETS, registry,
            ),
            arrival=BulkHistogram(
                "streamscore_arrival_latency_seconds",
                "Kafka's share of end-to-end latency before the worker: from an event's record"
                " timestamp to the fetch that brought it (producer batching, the broker,"
                " consumer lag); 0 when the producer's clock runs ahead.",
                LATENCY_BUCKETS, registry,
            ),
            processing=BulkHistogram(
                "streamscore_processing_latency_seconds",
                "The worker's share of end-to-end latency: from the fetch that brought an event"
                " to its score handed to the producer (decode, features, batch wait, model).",
                LATENCY_BUCKETS, registry,
            ),
            in_flight=Gauge(
                "streamscore_in_flight", "Events consumed and not yet emitted.", registry=registry
            ),
            paused_partitions=Gauge(
                "streamscore_paused_partitions", "Partitions paused by backpressure.",
                registry=registry,
            ),
            model_info=Gauge(
                "streamscore_model_info", "The model in use (value 1).",
                ["model", "version", "device"], registry=registry,
            ),
            scores=Counter(
                "streamscore_scores", "Scores emitted by model, version and route.",
                ["model", "version", "route"], registry=registry,
            ),
            model_compute=Counter(
                "streamscore_model_compute_seconds", "Model compute time.",
                ["model", "version", "device"], registry=registry,
            ),
            feature_updates=Counter(
                "streamscore_feature_updates", "Profile feature updates applied to the table.",
                registry=registry,
            ),
            ready=Gauge(
                "streamscore_ready", "1 when /health/ready answers 200.", registry=registry
            ),
            consumer_lag=Gauge(
                "streamscore_consumer_lag",
                "Records of an owned partition not yet committed (end offset - committed).",
                ["topic", "partition"], registry=registry,
            ),
            deadline_missed=Counter(
                "streamscore_deadline_missed",
                "Events past STREAMSCORE_DEADLINE_MS at dispatch: scored down the ladder.",
                registry=registry,
            ),
            breaker_open=Gauge(
                "streamscore_breaker_open",
                "1 while the primary model's circuit breaker is open or probing.",
                registry=registry,
            ),
            emit_retries=Counter(
                "streamscore_emit_retries",
                "Outputs unacknowledged a delivery timeout after they were sent (once per"
                " timeout), or sent again after a producer error.",
                registry=registry,
            ),
            shadow_abs_diff=BulkHistogram(
                "streamscore_shadow_abs_diff", "|primary score - shadow score| per event.",
                DIFF_BUCKETS, registry,
            ),
            shadow_shed=Counter(
                "streamscore_shadow_shed",
                "Events the shadow model did not score: shed under load, or it failed.",
                ["reason"], registry=registry,
            ),
            rollbacks=Counter(
                "streamscore_rollbacks",
                "Automatic canary rollbacks written to the control topic, by breached threshold.",
                ["reason"], registry=registry,
            ),
            plans_applied=Counter(
                "streamscore_plans_applied", "Rollout plans this worker switched to.",
                registry=registry,
            ),
            plans_rejected=Counter(
                "streamscore_plans_rejected",
                "Rollout plans this worker could not apply (it kept its current plan).",
                registry=registry,
            ),
            escalation_failures=Counter(
                "streamscore_escalation_failures",
                "Escalated events the heavier model could not score (they keep the first score).",
                registry=registry,
            ),
            dlq_cut=Counter(
                "streamscore_dlq_cut",
                "Dead letters cut to fit the DLQ topic (dlq.value.bytes and dlq.value.sha256"
                " say what the value was).",
                registry=registry,
            ),
            degraded_features=Counter(
                "streamscore_degraded_features",
                "Events scored on partly imputed features because their state could not be"
                " read (score degraded=true), by reason.",
                ["reason"], registry=registry,
            ),
            model_load=Gauge(
                "streamscore_model_load_seconds",
                "Time the model took to load (read, verify, move to its device).",
                ["model", "version"], registry=registry,
            ),
            model_warmup=Gauge(
                "streamscore_model_warmup_seconds",
                "Time the model's warm-up batches took before it took traffic.",
                ["model", "version"], registry=registry,
            ),
            model_timeouts=Counter(
                "streamscore_model_timeouts",
                "Model calls that did not answer within STREAMSCORE_MODEL_TIMEOUT_MS.",
                ["model", "version"], registry=registry,
            ),
            feature_read=Histogram(
                "streamscore_feature_read_seconds",
                "Time to read a chunk's state (its multi-gets) for its features.",
                buckets=MODEL_BUCKETS, registry=registry,
            ),
            ack_latency=Histogram(
                "streamscore_ack_latency_seconds",
                "From outputs handed to the producer to the broker's acknowledgement of all of"
                " them (one observation per batch of scores, dead letters or state writes).",
                buckets=LATENCY_BUCKETS, registry=registry,
            ),
        )  # fmt: skip
        # The process itself: CPU seconds, resident memory, open file descriptors, GC.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        for outcome in OUTCOMES:  # every series exists from the start, at 0
            metrics.events.labels(outcome)
        for stage in STAGES:
            metrics.dlq.labels(stage)
        for reason in ROLLBACK_REASONS:
            metrics.rollbacks.labels(reason)
        for reason in SHED_REASONS:
            metrics.shadow_shed.labels(reason)
        for reason in DEGRADED_REASONS:
            metrics.degraded_features.labels(reason)
        return metrics
