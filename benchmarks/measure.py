"""What is measured, and how: outputs read back, completion, memory.

- **Outputs** are read back with confluent-kafka once a phase is complete
  (:class:`OutputTally`), so the reader does not compete with the measured
  process for the CPU while it works. Each output is matched to its input by
  ``event_id``; latency is the output record's timestamp minus the input
  record's timestamp, both epoch milliseconds on this machine's clock.
- **Completion** is judged from the consumer group's committed offsets
  against the ends the publisher saw acknowledged (:func:`wait_until_committed`):
  every configuration commits only what it has processed, and checking costs
  the measured process nothing.
- **Memory** is the kernel's peak resident set (``VmHWM``) of the measured
  process, reset between phases through ``/proc/PID/clear_refs``, plus the
  polled peak of any child processes (:class:`RssMonitor`).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from benchmarks.exceptions import BenchmarkError
from streams.harness import histogram_quantiles

_PREFIX = b'{"event_id":"'


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Latency percentiles in milliseconds (NaN when nothing was measured)."""

    p50: float
    p95: float
    p99: float
    max: float

    @staticmethod
    def of(values_ms: Collection[float]) -> Percentiles:
        if not values_ms:
            nan = float("nan")
            return Percentiles(nan, nan, nan, nan)
        data = np.fromiter(values_ms, dtype=np.float64, count=len(values_ms))
        p50, p95, p99 = (float(x) for x in np.percentile(data, [50, 95, 99]))
        return Percentiles(p50, p95, p99, float(data.max()))


@dataclass(slots=True)
class PhaseOutput:
    """What one phase's inputs produced, matched by event id."""

    expected: int  # valid events published in this phase
    malformed: int  # malformed records published in this phase
    scored: int = 0  # distinct expected event ids with an output
    duplicates: int = 0  # further outputs of an already-seen event id
    dead: int = 0  # records on the dead-letter topic
    other: int = 0  # outputs not matching an expected id (e.g. passed-through malformed)
    first_ms: int = 0  # earliest output timestamp
    last_ms: int = 0  # latest output timestamp
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def missing(self) -> int:
        """Inputs without an output: valid events unscored, malformed ones not accounted for."""
        return (self.expected - self.scored) + max(0, self.malformed - self.dead - self.other)

    @property
    def outputs(self) -> int:
        return self.scored + self.dead + self.other

    def rate(self) -> float:
        """Outputs per second between the first and the last output record."""
        span_s = max(self.last_ms - self.first_ms, 1) / 1000.0
        return self.outputs / span_s


class OutputTally:
    """Reads a configuration's output topics from the start, one phase at a time."""

    def __init__(
        self, bootstrap: str, scores: str, dlq: str, partitions: int, event_id: str = "event_id"
    ) -> None:
        self._scores = scores
        #: The input events' id field: a peer that passes events on outputs them as they are.
        self._event_id = event_id
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                # Long enough for the embedded broker to assemble a fetch: with a 10 ms
                # wait it answers empty on a partition of some 20,000 small record
                # batches (the scores of batch=1 runs), however far behind the reader is.
                "fetch.wait.max.ms": 500,
            }
        )
        self._partitions = [
            TopicPartition(t, p, 0) for t in (scores, dlq) for p in range(partitions)
        ]
        self._consumer.assign(self._partitions)
        # Paused between reads: a consumer prefetches whatever it is assigned, and its
        # fetches would load the broker while the measured process works.
        self._consumer.pause(self._partitions)

    def read(
        self,
        sent_ms: Mapping[str, int],
        malformed: int,
        quiet_s: float = 3.0,
        timeout_s: float = 60.0,
    ) -> PhaseOutput:
        """Read until every input is accounted for, or nothing new came for ``quiet_s``."""
        out = PhaseOutput(expected=len(sent_ms), malformed=malformed)
        seen: set[str] = set()
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        self._consumer.resume(self._partitions)
        try:
            self._read(out, seen, sent_ms, deadline, last_new, quiet_s)
        finally:
            self._consumer.pause(self._partitions)
        return out

    def _read(
        self,
        out: PhaseOutput,
        seen: set[str],
        sent_ms: Mapping[str, int],
        deadline: float,
        last_new: float,
        quiet_s: float,
    ) -> None:
        first, last = 1 << 62, 0
        while out.missing > 0 and time.monotonic() < deadline:
            messages = self._consumer.consume(10_000, 0.2)
            if not messages:
                if time.monotonic() - last_new > quiet_s:
                    break
                continue
            last_new = time.monotonic()
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise BenchmarkError(f"reading outputs failed: {error}")
                    continue
                stamp = int(message.timestamp()[1])
                first, last = min(first, stamp), max(last, stamp)
                if message.topic() != self._scores:
                    out.dead += 1
                    continue
                event_id = _event_id(message.value() or b"", self._event_id)
                sent = None if event_id is None else sent_ms.get(event_id)
                if event_id is None or sent is None:
                    out.other += 1
                elif event_id in seen:
                    out.duplicates += 1
                else:
                    seen.add(event_id)
                    out.scored += 1
                    out.latencies_ms.append(float(stamp - sent))
        out.first_ms, out.last_ms = (first, last) if last else (0, 0)

    def close(self) -> None:
        self._consumer.close()


def _event_id(value: bytes, passed_on: str = "event_id") -> str | None:
    """The ``event_id`` of a score, or the ``passed_on`` field of a passed-through event;
    None if it has neither."""
    if value.startswith(_PREFIX):  # every score and event here starts so: skip the parse
        end = value.find(b'"', len(_PREFIX))
        if end > 0:
            return value[len(_PREFIX) : end].decode(errors="replace")
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    found = parsed.get("event_id", parsed.get(passed_on))
    return found if isinstance(found, str) else None


def bucket_percentiles(
    after: Mapping[float, float], before: Mapping[float, float] | None = None
) -> Percentiles:
    """p50/p95/p99 in ms of what a histogram observed between two readings (max: NaN)."""
    p50, p95, p99 = (1000.0 * q for q in histogram_quantiles(after, before, (0.5, 0.95, 0.99)))
    return Percentiles(p50, p95, p99, float("nan"))


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets on ``topic`` (-1: none yet)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def wait_until_committed(
    bootstrap: str,
    group: str,
    topic: str,
    ends: Mapping[int, int],
    *,
    alive: Callable[[], bool],
    stall_s: float,
    on_tick: Callable[[], None] | None = None,
    interval_s: float = 0.25,
) -> bool:
    """Wait until the group has committed every partition to its end.

    Returns False when the committed offsets made no progress for ``stall_s``
    seconds (the caller then counts what did come out). Raises if the
    measured process exits.
    """
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    tps = [TopicPartition(topic, p) for p in ends]
    best = -1
    progressed = time.monotonic()
    try:
        while True:
            if not alive():
                raise BenchmarkError("the measured process exited")
            if on_tick is not None:
                on_tick()
            offsets = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
            total = sum(max(0, offsets.get(p, -1)) for p in ends)
            if all(offsets.get(p, -1) >= end for p, end in ends.items()):
                return True
            if total > best:
                best, progressed = total, time.monotonic()
            elif time.monotonic() - progressed > stall_s:
                return False
            time.sleep(interval_s)
    finally:
        consumer.close()


class RssMonitor:
    """Peak resident memory of a process and its children, per phase."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self._interval = interval_s
        self._children: list[int] = []
        self._children_peak = 0
        self._polled_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="rss-monitor", daemon=True)

    def start(self) -> RssMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def reset(self) -> None:
        """Start a new phase: the kernel's peak is reset to the current resident set."""
        for pid in (self.pid, *_children(self.pid)):
            with contextlib.suppress(OSError):  # not permitted: the polled peak still counts
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        self._children_peak = 0
        self._polled_peak = 0

    def peak_bytes(self) -> int:
        """Peak since start or the last reset: the kernel's high-water mark where readable."""
        own = _status_kib(self.pid, "VmHWM") * 1024
        return max(own + self._children_peak, self._polled_peak)

    def _poll(self) -> None:
        ticks = 0
        while not self._stop.wait(self._interval):
            if ticks % 20 == 0:  # looking for children scans /proc: not every tick
                self._children = _children(self.pid)
            ticks += 1
            children = sum(_status_kib(pid, "VmRSS") for pid in self._children) * 1024
            total = _status_kib(self.pid, "VmRSS") * 1024 + children
            self._children_peak = max(self._children_peak, children)
            self._polled_peak = max(self._polled_peak, total)


class CpuTrace:
    """CPU time of processes, sampled in the background, to charge a span of wall time.

    A drain's span (first to last output record) is only known once its outputs are
    read; the trace lets that span be charged afterwards, start-up excluded.
    """

    def __init__(self, pids: Mapping[str, int], interval_s: float = 0.1) -> None:
        self._pids = dict(pids)
        self._interval = interval_s
        self._samples: list[tuple[float, dict[str, float]]] = []  # wall ms, CPU s by name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="cpu-trace", daemon=True)

    def start(self) -> CpuTrace:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def seconds(self, name: str, start_ms: float, end_ms: float) -> float | None:
        """CPU seconds ``name`` used between two wall-clock times (interpolated)."""
        samples = list(self._samples)
        if name not in self._pids or end_ms <= start_ms or not samples or samples[0][0] > start_ms:
            return None
        if samples[-1][0] < end_ms:
            return None
        return _at(samples, name, end_ms) - _at(samples, name, start_ms)

    def _sample(self) -> None:
        now = time.time() * 1000
        self._samples.append((now, {name: cpu_seconds(pid) for name, pid in self._pids.items()}))

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()


def _at(samples: Sequence[tuple[float, dict[str, float]]], name: str, when_ms: float) -> float:
    """A process's CPU seconds at a wall-clock time, between the samples around it."""
    index = bisect.bisect_left([stamp for stamp, _ in samples], when_ms)
    if index == 0:
        return samples[0][1][name]
    (t0, before), (t1, after) = samples[index - 1], samples[min(index, len(samples) - 1)]
    if t1 <= t0:
        return before[name]
    return before[name] + (after[name] - before[name]) * (when_ms - t0) / (t1 - t0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, name: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    """Descendants of ``pid`` (from /proc/*/stat: the kernel here has no task children list)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
