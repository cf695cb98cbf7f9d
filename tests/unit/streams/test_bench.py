"""The benchmark harness's pure parts: input, output accounting, percentiles, memory, report."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import click
import numpy as np
import orjson
import pytest
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from benchmarks import bare_peer, stage_probe
from benchmarks.measure import (
    CpuTrace,
    Percentiles,
    PhaseOutput,
    RssMonitor,
    _event_id,
    bucket_percentiles,
)
from benchmarks.preload import InputStream, Workload
from benchmarks.report import markdown
from benchmarks.runner import Options, Phase, Results
from pipelines.fraud.features import NUMERIC_FEATURES
from streams.cli.bench import _command_line
from streams.cli.bench import bench as bench_command
from streams.harness import histogram_buckets


def test_backlog_mixes_the_malformed_share_into_the_events() -> None:
    workload = Workload(events=1000, keys=50, partitions=4, malformed_share=0.02, seed=5)
    backlog = InputStream(workload).backlog()
    assert len(backlog) == 1000
    assert sum(r.event_id is None for r in backlog) == workload.malformed == 20
    ids = [r.event_id for r in backlog if r.event_id is not None]
    assert len(set(ids)) == 980
    bad = [i for i, r in enumerate(backlog) if r.event_id is None]
    assert bad[0] < 100
    assert bad[-1] > 900


def test_same_seed_gives_the_same_input_for_every_configuration() -> None:
    workload = Workload(events=300, keys=20, partitions=2, seed=9)
    first, second = InputStream(workload), InputStream(workload)
    assert first.backlog() == second.backlog()
    assert first.events(50) == second.events(50)  # the paced loads continue identically
    assert first.profiles() == second.profiles()


def test_payload_padding_reaches_the_requested_size_and_stays_valid() -> None:
    workload = Workload(events=200, keys=20, partitions=2, payload_bytes=512, malformed_share=0)
    for record in InputStream(workload).backlog():
        assert len(record.value) == 512
        event = orjson.loads(record.value)
        assert event["event_id"] == record.event_id
        assert record.key == event["entity_id"].encode()


def test_event_id_is_read_from_scores_and_passed_through_events() -> None:
    assert _event_id(b'{"event_id":"e-0000001","entity_id":"acct-1","score":0.5}') == "e-0000001"
    assert _event_id(b'{"score":0.5,"event_id":"e-2"}') == "e-2"  # not first: parsed
    assert _event_id(b"not json at all") is None
    assert _event_id(b"[1, 2]") is None
    assert _event_id(b'{"event_id": 7}') is None


def test_missing_counts_unscored_events_and_unaccounted_malformed_records() -> None:
    out = PhaseOutput(expected=10, malformed=3, scored=10, dead=3)
    assert out.missing == 0
    # Quix passes malformed records through: they come out as "other" outputs.
    assert PhaseOutput(expected=10, malformed=3, scored=10, other=3).missing == 0
    assert PhaseOutput(expected=10, malformed=3, scored=8, dead=1).missing == 4
    # Extra outputs never hide a missing event.
    assert PhaseOutput(expected=10, malformed=0, scored=9, other=50).missing == 1


def test_rate_spans_first_to_last_output() -> None:
    out = PhaseOutput(expected=1000, malformed=0, scored=1000, first_ms=5_000, last_ms=5_500)
    assert out.rate() == pytest.approx(2000.0)


def test_percentiles_are_ordered_and_nan_when_empty() -> None:
    values = [float(x) for x in range(1, 1001)]
    p = Percentiles.of(values)
    assert p.p50 <= p.p95 <= p.p99 <= p.max == 1000.0
    assert math.isnan(Percentiles.of([]).p50)


def test_percentiles_from_histogram_buckets_between_two_readings() -> None:
    """As Prometheus's histogram_quantile over the difference of two scrapes."""
    registry = CollectorRegistry()
    histogram = Histogram("h_seconds", "h", buckets=(0.01, 0.02, 0.05), registry=registry)
    for value in (0.5, 0.5):  # before the phase: must not count
        histogram.observe(value)
    before = histogram_buckets(generate_latest(registry).decode(), "h_seconds")
    for value in [0.005] * 50 + [0.015] * 40 + [0.03] * 10:
        histogram.observe(value)
    after = histogram_buckets(generate_latest(registry).decode(), "h_seconds")
    assert after == {0.01: 50.0, 0.02: 90.0, 0.05: 100.0, math.inf: 102.0}

    got = bucket_percentiles(after, before)
    assert got.p50 == pytest.approx(10.0)  # the 50th of 100 is the last of the first bucket
    assert got.p95 == pytest.approx(20.0 + 30.0 * 5 / 10)  # halfway through (20, 50] ms
    assert got.p99 == pytest.approx(20.0 + 30.0 * 9 / 10)
    assert math.isnan(got.max)
    assert bucket_percentiles(after).p99 == 50.0  # beyond the last bound: that bound
    assert math.isnan(bucket_percentiles(before, before).p50)  # nothing observed between


def test_rss_monitor_reads_the_kernels_peak_and_resets_it() -> None:
    monitor = RssMonitor(os.getpid()).start()
    try:
        ballast = bytearray(64 * 2**20)
        ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page
        assert monitor.peak_bytes() >= 64 * 2**20
        del ballast
        monitor.reset()  # the kernel's peak drops to the current resident set
        assert monitor.peak_bytes() > 0
    finally:
        monitor.stop()


def _phase(config: str, kind: str, **changes: object) -> Phase:
    values: dict[str, object] = {
        "config": config, "kind": kind, "offered_rate": None, "records": 100, "scored": 99,
        "dead": 1, "other": 0, "duplicates": 0, "missing": 0, "rate": 1234.0,
        "latency": Percentiles(10, 20, 30, 40), "mean_batch": 12.5, "in_worker": None,
        "arrival": None,
        "peak_rss": 300 * 2**20, "seconds": 1.0, "startup_s": 4.0,
    }  # fmt: skip
    values.update(changes)
    return Phase(**values)  # type: ignore[arg-type]  # a test's shortcut


def test_report_has_a_row_per_phase_and_says_what_was_lost(tmp_path: Path) -> None:
    options = Options(Workload(100, 10, 2), configs=("a", "c"), latency_loads=(0.5,))
    results = Results(options, mean_value_bytes=150.0)
    results.phases += [
        _phase("a", "drain", cpu_us_per_event=31.25, broker_cpu_us_per_event=4.5),
        _phase(
            "a",
            "load",
            offered_rate=617.0,
            in_worker=Percentiles(3.2, 7, 9.6, math.nan),
            arrival=Percentiles(51, 70, 88.4, math.nan),
        ),
        _phase("a", "burst", max_in_flight=4100.0),
        _phase("c", "drain", mean_batch=None, missing=7, rate=80.0),
    ]
    results.skipped.append(("c", 617.0, "above its drain peak"))
    text = markdown(results, "streamscore bench --events 100", [])
    assert "| (a) streamscore | **1,234** |" in text
    row = (
        "| (a) streamscore | 617 | 1,234 | 100 | 10 | 20 | **30** | 40 | 51 / 88 | 3 / 10 | 12.5 |"
    )
    assert row in text
    assert "| (c) naive Faust | 617 | not run: above its drain peak |||||||||||" in text
    assert "| 4,100 |" in text
    assert "| 31.2 / 4.5 |" in text  # CPU per event of the worker and of the broker
    assert "## Lost events" in text
    assert "(c) naive Faust, drain: 7 of 100" in text
    assert "`streamscore bench --events 100`" in text


def test_settings_in_the_environment_are_named_in_the_command_and_the_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every worker inherits the bench's STREAMSCORE_* variables: the report must say so."""
    options = Options(Workload(100, 10, 2), configs=("a",))
    results = Results(options, mean_value_bytes=150.0)
    results.phases.append(_phase("a", "drain"))
    assert "settings from the environment" not in markdown(results, "streamscore bench", [])
    monkeypatch.setenv("STREAMSCORE_MAX_IN_FLIGHT", "1024")
    monkeypatch.setenv("STREAMSCORE_KAFKA_SASL_PASSWORD", "hunter2")
    text = markdown(results, "streamscore bench", [])
    assert "`STREAMSCORE_KAFKA_SASL_PASSWORD=***`" in text
    assert "hunter2" not in text
    assert (
        "in every streamscore worker of this run: `STREAMSCORE_KAFKA_SASL_PASSWORD=***` "
        "`STREAMSCORE_MAX_IN_FLIGHT=1024`" in text
    )
    ctx = click.Context(bench_command, info_name="bench")
    ctx.params = {"n_events": 100}
    command = _command_line(ctx)
    assert command.startswith(
        "STREAMSCORE_KAFKA_SASL_PASSWORD='***' STREAMSCORE_MAX_IN_FLIGHT=1024 streamscore bench "
    )


def test_overload_is_reported_with_in_flight_paused_partitions_and_the_degraded_share() -> None:
    options = Options(Workload(100, 10, 2), configs=("a",), overload=1.5,
                      overload_deadline_ms=250.0)  # fmt: skip
    results = Results(options, mean_value_bytes=150.0)
    results.phases += [
        _phase("a", "drain"),
        _phase(
            "a",
            "overload",
            offered_rate=1851.0,
            records=3000,
            scored=2000,
            rate=1500.0,
            in_worker=Percentiles(8.4, 15, 21.6, math.nan),
            max_in_flight=4096.0,
            max_paused=8.0,
            degraded=500,
            deadline_missed=480,
            process_cpu=0.9,
            bench_cpu=0.3,
        ),
    ]
    text = markdown(results, "streamscore bench --events 100", [])
    assert "## Overload: offered past the drain peak" in text
    assert "`STREAMSCORE_DEADLINE_MS=250`" in text
    row = (
        "| (a) streamscore | 1,851 | 1,500 | 3,000 | **8 / 22** | 10 / 30 | 4,096 | 8 "
        "| 500 (25.0%) | 480 | 0.90 / 0.30 |"
    )
    assert row in text


def test_cpu_trace_charges_a_span_between_its_samples() -> None:
    trace = CpuTrace({"p": os.getpid()})
    trace._samples = [(1000.0, {"p": 1.0}), (2000.0, {"p": 3.0}), (3000.0, {"p": 3.0})]
    assert trace.seconds("p", 1500.0, 2500.0) == pytest.approx(1.0)
    assert trace.seconds("p", 1000.0, 3000.0) == pytest.approx(2.0)
    assert trace.seconds("p", 500.0, 2500.0) is None  # before the first sample
    assert trace.seconds("p", 1500.0, 3500.0) is None  # after the last
    assert trace.seconds("broker", 1500.0, 2500.0) is None  # not traced


def test_cpu_trace_sees_the_cpu_a_process_uses() -> None:
    trace = CpuTrace({"self": os.getpid()}, interval_s=0.01).start()
    start = time.process_time()
    while time.process_time() - start < 0.3:  # burn CPU, not wall time
        sum(range(1000))
    trace.stop()
    first, last = trace._samples[0][0], trace._samples[-1][0]
    used = trace.seconds("self", first, last)
    assert used is not None
    assert used >= 0.2


def test_repeated_drains_are_reported_per_round_with_medians_and_the_peer_ratio() -> None:
    options = Options(Workload(100, 10, 2), configs=("a", "d"), latency_loads=(), rounds=3)
    results = Results(options)
    for i, (mine, peer) in enumerate([(20_000, 50_000), (30_000, 40_000), (25_000, 60_000)]):
        results.phases += [
            _phase("a", "drain", rate=float(mine), round=i + 1, cpu_us_per_event=30.0),
            _phase("d", "drain", rate=float(peer), round=i + 1),
        ]
    text = markdown(results, "streamscore bench --rounds 3", [])
    assert "| round | (a) streamscore | (d) Quix bare (no model) |" in text
    assert "| 2 | 30,000 (30.0) | 40,000 (-) | 0.75x |" in text
    assert "| median | **25,000** | **50,000** | **0.42x** |" in text  # of 0.40, 0.75, 0.42
    assert text.count("| (a) streamscore | **") == 1  # the main table: round 1 only
    assert "| (a) streamscore | **20,000** |" in text


def test_stage_probe_feeds_the_stages_the_bench_input_with_its_malformed_share() -> None:
    records = stage_probe.chunk(400, 0.01)
    assert len(records) == 400
    decoded = stage_probe.decode_events(records)
    assert (len(decoded.items), len(decoded.dead)) == (396, 4)
    assert 0 < stage_probe.microseconds_per_record(records, repeats=2, loops=1) < 1e4

    prepared = stage_probe.feature_stage().prepare(records)
    assert prepared.inputs is not None
    assert len(prepared.inputs) == 396
    assert len(prepared.dead) == 4
    profile_column = NUMERIC_FEATURES.index("account_age_days_log")
    missing = np.isnan(prepared.inputs.arrays["numeric"][:, profile_column]).mean()
    assert missing < 0.5  # profiles are found (a lookup in the wrong partition finds none)


class _Message:
    def __init__(self, offset: int, eof: bool = False) -> None:
        self.offset, self.eof = offset, eof

    def error(self) -> KafkaError | None:
        return KafkaError(KafkaError._PARTITION_EOF) if self.eof else None

    def value(self) -> bytes:
        return b"v%d" % self.offset

    def key(self) -> bytes:
        return b"k%d" % self.offset


class _Loop:
    """The consumer and producer of the bare peer, recording what happens in which order."""

    def __init__(self, fetches: list[list[_Message]]) -> None:
        self.fetches = fetches
        self.log: list[str] = []
        self.produced: list[tuple[str, bytes, bytes, int]] = []

    def consume(self, n: int, timeout: float) -> list[_Message]:
        return self.fetches.pop(0) if self.fetches else []

    def produce(self, topic: str, value: bytes, key: bytes, timestamp: int) -> None:
        self.produced.append((topic, value, key, timestamp))
        self.log.append(f"produce {value.decode()}")

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.log.append("flush")
        return 0

    def commit(self, asynchronous: bool) -> None:
        assert not asynchronous
        self.log.append("commit")


def test_the_bare_peer_commits_only_what_it_flushed_and_stamps_each_output() -> None:
    loop = _Loop([[_Message(0), _Message(1)], [_Message(2, eof=True)], [_Message(3)]])
    calls = iter(range(100))
    before = time.time_ns() // 1_000_000
    passed = bare_peer.run(loop, loop, "out", lambda: next(calls) >= 4, commit_interval_s=0.0)
    assert passed == 3  # the end-of-partition event is not a record
    assert [p[:3] for p in loop.produced] == [
        ("out", b"v0", b"k0"), ("out", b"v1", b"k1"), ("out", b"v3", b"k3"),
    ]  # fmt: skip
    assert all(before <= p[3] <= time.time_ns() // 1_000_000 for p in loop.produced)
    # Every commit comes after a flush of everything produced before it; nothing is
    # committed for a fetch that brought no record.
    assert loop.log == [
        "produce v0", "produce v1", "flush", "commit", "produce v3", "flush", "commit",
    ]  # fmt: skip


def _sampled_visits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's own visits pipeline, given a sample of three visits by two users."""
    import dataclasses

    from tests.pipelines import visits

    sample = [
        orjson.dumps({"user": u, "visit_id": v, "ts": t, "seconds": 5.0, "pages": 1,
                      "device": "web"})
        for u, v, t in (("ann", "v1", 100.0), ("bob", "v2", 160.0), ("ann", "v3", 200.0))
    ]  # fmt: skip
    declared = dataclasses.replace(visits.pipeline, sample=lambda: sample)
    monkeypatch.setattr(visits, "sampled", declared, raising=False)


def test_a_declared_pipelines_sample_is_replayed_with_new_ids_and_later_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _sampled_visits(monkeypatch)
    workload = Workload(events=7, keys=1, partitions=2, malformed_share=0,
                        pipeline="tests.pipelines.visits:sampled")  # fmt: skip
    stream = InputStream(workload)
    assert stream.profiles() == []  # the pipeline declares no profile
    records = stream.backlog() + stream.events(2)  # the paced loads go on where it stopped
    events = [orjson.loads(r.value) for r in records]
    assert [r.event_id for r in records] == [
        "v1", "v2", "v3", "v1~1", "v2~1", "v3~1", "v1~2", "v2~2", "v3~2",
    ]  # fmt: skip
    assert [e["visit_id"] for e in events] == [r.event_id for r in records]
    assert [r.key for r in records] == [e["user"].encode() for e in events]
    span = 200.0 - 100.0 + 86_400.0  # a lap is the sample's span and a day later
    assert [e["ts"] for e in events] == [
        100.0, 160.0, 200.0, 100 + span, 160 + span, 200 + span,
        100 + 2 * span, 160 + 2 * span, 200 + 2 * span,
    ]  # fmt: skip
    times = [e["ts"] for e in events]
    assert times == sorted(times)  # no replayed event is older than one before it


def test_a_pipeline_without_a_sample_cannot_be_replayed() -> None:
    from benchmarks.exceptions import BenchmarkError

    workload = Workload(events=5, keys=1, partitions=1, pipeline="tests.pipelines.visits:pipeline")
    with pytest.raises(BenchmarkError, match="declares no sample"):
        InputStream(workload)
