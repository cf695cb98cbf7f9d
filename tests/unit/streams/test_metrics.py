"""The bulk histogram exposes exactly what a prometheus_client Histogram would."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streams.metrics import LATENCY_BUCKETS, BulkHistogram, Metrics


def test_bulk_histogram_matches_the_standard_one() -> None:
    values = np.random.default_rng(1).exponential(0.02, 5000)
    values[:10] = LATENCY_BUCKETS[3]  # exactly on a bound: counted in that bucket (le)
    bulk_registry, plain_registry = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("x_seconds", "x", LATENCY_BUCKETS, bulk_registry)
    plain = Histogram("x_seconds", "x", buckets=LATENCY_BUCKETS, registry=plain_registry)
    bulk.observe_many(values[:2500])
    bulk.observe_many(values[2500:])
    for value in values:
        plain.observe(value)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for metric in registry.collect()
            for s in metric.samples
            if not s.name.endswith("_created")
        }

    got, want = samples(bulk_registry), samples(plain_registry)
    assert got.keys() == want.keys()
    for key in want:
        assert abs(got[key] - want[key]) < 1e-9, key


def test_weighted_observations_count_each_value_that_many_times() -> None:
    registry = CollectorRegistry()
    bulk = BulkHistogram("w_seconds", "w", LATENCY_BUCKETS, registry)
    values = np.asarray([0.004, LATENCY_BUCKETS[4], 0.2, 7.0])
    weights = np.asarray([3, 0, 2, 1], dtype=np.int64)
    bulk.observe_many(values, weights)
    samples = {
        (s.name, s.labels.get("le", "")): s.value for m in registry.collect() for s in m.samples
    }
    assert samples[("w_seconds_count", "")] == 6
    assert samples[("w_seconds_sum", "")] == pytest.approx(3 * 0.004 + 2 * 0.2 + 7.0)
    assert samples[("w_seconds_bucket", "0.005")] == 3
    assert samples[("w_seconds_bucket", "0.01")] == 3  # the weight-0 value on its bound: none
    assert samples[("w_seconds_bucket", "0.2")] == 5
    assert samples[("w_seconds_bucket", "5.0")] == 5
    assert samples[("w_seconds_bucket", "+Inf")] == 6


def test_every_contract_metric_is_exported_from_the_start() -> None:
    metrics = Metrics.create()
    text = generate_latest(metrics.registry).decode()
    for name in (
        'streamscore_events_total{outcome="scored"} 0.0',
        'streamscore_events_total{outcome="degraded"} 0.0',
        'streamscore_events_total{outcome="dlq"} 0.0',
        'streamscore_dlq_total{stage="decode"} 0.0',
        'streamscore_dlq_total{stage="emit"} 0.0',
        "streamscore_batch_size_bucket",
        "streamscore_batch_wait_seconds_bucket",
        "streamscore_model_latency_seconds_bucket",
        "streamscore_end_to_end_latency_seconds_bucket",
        "streamscore_processing_latency_seconds_bucket",
        "streamscore_arrival_latency_seconds_bucket",
        "streamscore_in_flight 0.0",
        "streamscore_paused_partitions 0.0",
    ):
        assert name in text, name


def test_the_process_itself_and_its_peers_are_measured() -> None:
    text = generate_latest(Metrics.create().registry).decode()
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "python_gc_collections_total",
        "python_info",
        "streamscore_ack_latency_seconds_bucket",
        "streamscore_feature_read_seconds_bucket",
        'streamscore_degraded_features_total{reason="state_unreadable"} 0.0',
        "streamscore_dlq_cut_total 0.0",
    ):
        assert name in text, name
    resident = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("process_resident_memory_bytes")
    )
    assert resident > 10 * 2**20  # this very process, with torch and numpy loaded
