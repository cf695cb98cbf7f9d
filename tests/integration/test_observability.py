"""A real Prometheus scrapes a real worker with deploy/prometheus/rules.yml loaded.

Debian's Prometheus server runs on a free port with a 1 s scrape and rule
evaluation interval; the assertions go through its HTTP API, so they prove
the rules evaluate on the worker's actual series, not only that they parse.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.fraud.synthetic import SyntheticWorld, malformed_values
from streams.harness import WorkerProcess, metric_value
from streams.kafka.embedded import EmbeddedBroker, free_port
from tests.deploy.promql import RULES, rules, unknown_names
from tests.integration.conftest import Deployment, Published, event_record

N_EVENTS = 600
N_BAD = 6


class Prometheus:
    """A Prometheus server process with its own config and data directory."""

    def __init__(self, tmp: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        assert binary is not None, "prometheus is missing: `make test` installs it (Debian)"
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "streamscore", "static_configs": [{"targets": [target]}]}
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = tmp / "prometheus.log"
        self.process = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, float]:
        """Instant query: ``{labels as text: value}``."""
        result = self.api("query", query=expr)["result"]
        return {
            json.dumps(item["metric"], sort_keys=True): float(item["value"][1]) for item in result
        }

    def until(self, expr: str, done: Callable[[dict[str, float]], bool], timeout: float = 30):
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.query(expr)
            except OSError:  # not listening yet
                value = {}
            if done(value) or time.monotonic() > deadline:
                return value
            time.sleep(0.25)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def only(value: dict[str, float]) -> float:
    (number,) = value.values()
    return number


@pytest.fixture(scope="module")
def scraped(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerProcess, Prometheus, str]]:
    """A worker that scored N_EVENTS and dead-lettered N_BAD, scraped by Prometheus."""
    tmp = tmp_path_factory.mktemp("observability")
    deployment = Deployment(broker.bootstrap, tmp)
    prometheus: Prometheus | None = None
    try:
        worker = deployment.worker()
        worker.wait_ready()
        prometheus = Prometheus(tmp, f"127.0.0.1:{worker.web_port}")
        # A first scrape before the traffic, so that rates see the counters move.
        before = prometheus.until('streamscore_events_total{outcome="scored"}', bool)
        assert only(before) == 0
        world = SyntheticWorld(seed=5, n_entities=50)
        records = [event_record(item.event) for item in world.events(N_EVENTS)]
        records += [Published(b"acct-bad", v, None) for v in malformed_values(3, N_BAD)]
        deployment.publish("events", records)
        reader = deployment.reader()
        out = reader.until(lambda o: len(o.scores) >= N_EVENTS and len(o.dead) >= N_BAD, 60)
        reader.close()
        assert (len(out.scores), len(out.dead)) == (N_EVENTS, N_BAD)
        yield worker, prometheus, worker.settled_metrics()
    finally:
        if prometheus is not None:
            prometheus.stop()
        deployment.stop_all()


@pytest.mark.broker
def test_prometheus_sees_what_the_worker_did_through_the_recording_rules(
    scraped: tuple[WorkerProcess, Prometheus, str],
) -> None:
    _, prometheus, metrics = scraped
    totals = prometheus.until(
        'outcome:streamscore_events:sum{outcome="scored"}', lambda v: v and only(v) >= N_EVENTS
    )
    assert only(totals) == N_EVENTS
    dlq = prometheus.query('outcome:streamscore_events:sum{outcome="dlq"}')
    assert only(dlq) == N_BAD
    assert only(prometheus.query('streamscore_events_total{outcome="scored"}')) == N_EVENTS

    batches = metric_value(metrics, "streamscore_batch_size_count")
    mean = metric_value(metrics, "streamscore_batch_size_sum") / batches
    recorded = prometheus.until("streamscore:batch_size:mean", lambda v: bool(v))
    assert only(recorded) == pytest.approx(mean)

    rate = prometheus.until(
        'outcome:streamscore_events:rate1m{outcome="scored"}', lambda v: bool(v) and only(v) > 0
    )
    assert only(rate) > 0
    p50 = only(prometheus.until("streamscore:end_to_end_latency_seconds:p50_1m", bool))
    p99 = only(prometheus.until("streamscore:end_to_end_latency_seconds:p99_1m", bool))
    assert 0 < p50 <= p99 <= 60
    assert not math.isnan(p99)
    worker_p99 = only(prometheus.until("streamscore:processing_latency_seconds:p99_1m", bool))
    assert 0 < worker_p99 <= p99  # the worker's share of the end-to-end time
    kafka_p99 = only(prometheus.until("streamscore:arrival_latency_seconds:p99_1m", bool))
    assert 0 < kafka_p99 <= p99  # and Kafka's, before the worker
    assert only(prometheus.query("streamscore:batch_size:mean1m")) > 0

    # The process and its peers: memory, broker acknowledgements, state reads, model load.
    assert metric_value(metrics, "process_resident_memory_bytes") > 50 * 2**20
    assert metric_value(metrics, "process_open_fds") > 0
    assert metric_value(metrics, "streamscore_ack_latency_seconds_count") > 0
    assert metric_value(metrics, "streamscore_feature_read_seconds_count") > 0
    loaded = {"model": "fraud-mlp", "version": "1"}
    assert 0 < metric_value(metrics, "streamscore_model_load_seconds", loaded) < 60
    assert 0 < metric_value(metrics, "streamscore_model_warmup_seconds", loaded) < 60
    assert metric_value(metrics, "streamscore_model_timeouts_total", loaded) == 0
    ack_p99 = only(prometheus.until("streamscore:ack_latency_seconds:p99_5m", bool))
    assert 0 < ack_p99 <= p99


@pytest.mark.broker
def test_every_rule_evaluates_without_error_and_no_alert_fires_on_a_healthy_worker(
    scraped: tuple[WorkerProcess, Prometheus, str],
) -> None:
    _, prometheus, _ = scraped
    deadline = time.monotonic() + 15
    while True:  # wait for every rule's first evaluation
        groups = prometheus.api("rules")["groups"]
        evaluated = [r for g in groups for r in g["rules"] if r["health"] != "unknown"]
        if len(evaluated) == len(rules()) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    loaded = {r.get("name") for g in groups for r in g["rules"]}
    assert loaded == {r.get("record") or r.get("alert") for r in rules()}
    errors = {
        r["name"]: r.get("lastError") for g in groups for r in g["rules"] if r["health"] != "ok"
    }
    assert errors == {}
    firing = [a for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"]
    assert firing == []


@pytest.mark.broker
def test_dashboard_and_rules_read_only_series_a_real_worker_exports(
    scraped: tuple[WorkerProcess, Prometheus, str],
) -> None:
    _, _, metrics = scraped
    assert unknown_names(metrics) == {}
