"""Running a worker from outside, as an operator would: for the demo, the bench and tests.

:class:`WorkerProcess` starts ``streamscore worker`` as a child process with
its own environment, waits for ``/health/ready`` and stops it with SIGTERM
(or SIGKILL). :class:`OutputReader` reads the scores and dead-letter topics
back with a real Kafka client.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from streams.errors import StreamscoreError
from streams.kafka.embedded import free_port


class WorkerFailed(StreamscoreError):
    """The worker process exited or did not become ready; see its log."""


class WorkerProcess:
    """A ``streamscore worker`` child process."""

    def __init__(self, env: Mapping[str, str], log_path: Path, web_port: int | None = None):
        self.web_port = web_port or free_port()
        self.env = {**os.environ, **env, "STREAMSCORE_WEB_PORT": str(self.web_port)}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise WorkerFailed(f"the worker exited ({self.returncode}); log: {self.log_path}")
            try:
                status, _ = self.get("/health/ready", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise WorkerFailed(f"the worker was not ready within {timeout:.0f}s; log: {self.log_path}")

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        if status != 200:
            raise WorkerFailed(f"/metrics answered {status}")
        return body.decode()

    def settled_metrics(self, timeout: float = 10.0) -> str:
        """The metrics page once nothing is in flight (acknowledgements land after reads)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.metrics()
            if metric_value(text, "streamscore_in_flight") == 0 or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (drain, commit, exit); SIGKILL if it does not exit in time."""
        return self._signal(signal.SIGTERM, timeout)

    def kill(self) -> int:
        return self._signal(signal.SIGKILL, 10.0)

    def _signal(self, signum: int, timeout: float) -> int:
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signum)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return int(process.returncode)


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` (with these labels) in a Prometheus text page."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
        found = True
    if not found:
        raise KeyError(name)
    return total


def histogram_buckets(text: str, name: str) -> dict[float, float]:
    """Cumulative counts of histogram ``name`` by upper bound, from a Prometheus text page."""
    prefix = f'{name}_bucket{{le="'
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            bound, _, rest = line[len(prefix) :].partition('"')
            buckets[float(bound)] = float(rest.rpartition(" ")[2])  # float("+Inf") is inf
    return buckets


def histogram_quantiles(
    after: Mapping[float, float],
    before: Mapping[float, float] | None = None,
    quantiles: Sequence[float] = (0.5, 0.99),
) -> tuple[float, ...]:
    """Quantiles, in seconds, of what a histogram observed between two readings (NaN if none).

    As Prometheus's ``histogram_quantile``: linear within the bucket that holds
    the quantile, the upper bound of the last finite bucket beyond it.
    """
    bounds = sorted(after)
    counts = [after[b] - (before or {}).get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return tuple(math.nan for _ in quantiles)
    total = counts[-1]

    def quantile(q: float) -> float:
        rank = q * total
        index = next(i for i, c in enumerate(counts) if c >= rank)
        upper = bounds[index]
        if upper == math.inf:
            return bounds[index - 1] if index else math.nan
        lower, below = (bounds[index - 1], counts[index - 1]) if index else (0.0, 0.0)
        inside = counts[index] - below
        return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)

    return tuple(map(quantile, quantiles))


@dataclass
class Output:
    """What came out: scores and dead letters, as consumed."""

    scores: list[tuple[Message, dict[str, Any]]] = field(default_factory=list)
    dead: list[Message] = field(default_factory=list)

    def scored_ids(self) -> set[str]:
        return {value["event_id"] for _, value in self.scores}

    def first_scores_in_order(self) -> bool:
        """Per key, first scores follow their events' offsets (the contract's ordering)."""
        firsts: dict[bytes | None, list[int]] = {}
        seen: set[str] = set()
        for message, value in self.scores:
            if value["event_id"] not in seen:
                seen.add(value["event_id"])
                firsts.setdefault(message.key(), []).append(value["source"]["offset"])
        return all(offsets == sorted(offsets) for offsets in firsts.values())


class OutputReader:
    """Reads the scores and DLQ topics from the beginning with a confluent-kafka consumer."""

    def __init__(
        self,
        bootstrap: str,
        scores_topic: str,
        dlq_topic: str,
        partitions: int,
        isolation: str = "read_committed",
    ):
        self.scores_topic = scores_topic
        self.dlq_topic = dlq_topic
        self.output = Output()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"streamscore-reader-{os.getpid()}-{time.monotonic_ns()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "isolation.level": isolation,
            }
        )
        self._consumer.assign(
            [TopicPartition(t, p, 0) for t in (scores_topic, dlq_topic) for p in range(partitions)]
        )

    def poll(self, seconds: float = 0.2) -> int:
        """Read what is available for up to ``seconds``; return how many messages came."""
        count = 0
        for message in self._consumer.consume(10_000, seconds):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise WorkerFailed(f"reading output failed: {error}")
                continue
            count += 1
            if message.topic() == self.scores_topic:
                self.output.scores.append((message, orjson.loads(message.value() or b"null")))
            else:
                self.output.dead.append(message)
        return count

    def until(self, done: Callable[[Output], bool], timeout: float) -> Output:
        deadline = time.monotonic() + timeout
        while not done(self.output) and time.monotonic() < deadline:
            self.poll()
        return self.output

    def close(self) -> None:
        self._consumer.close()
