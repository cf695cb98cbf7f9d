"""The input: events (and malformed ones), their topics, and how they are published.

Every configuration gets the same records: :class:`InputStream` rebuilds the
pipeline's declared synthetic traffic from the seed for each one (``fraud``'s
world), or replays its declared sample from its start (a pipeline without
traffic, ``purchases``), so the backlog, the paced loads and the burst are
identical as long as their sizes are. Event ids carry no phase tag: they run
on across calls, so they are unique within a configuration's topic.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from benchmarks.exceptions import BenchmarkError
from streams.pipeline import PipelineError, Traffic, load_pipeline

#: Shortest sleep of the paced producer between bursts of due records.
_PACING_TICK_S = 0.001


@dataclass(frozen=True, slots=True)
class Workload:
    """What is pre-loaded: ``events`` records in all, of which a share is malformed."""

    events: int
    keys: int
    partitions: int
    payload_bytes: int = 0  # 0: each event as it is (a fraud event: about 150 bytes)
    malformed_share: float = 0.005
    seed: int = 11
    pipeline: str = "fraud"  # its declared traffic, or else its declared sample

    @property
    def malformed(self) -> int:
        return round(self.events * self.malformed_share)

    @property
    def valid(self) -> int:
        return self.events - self.malformed


class Record(NamedTuple):
    """One input record; ``event_id`` is None for a malformed one (it must be dead-lettered)."""

    key: bytes
    value: bytes
    event_id: str | None


#: Malformed values of a pipeline without synthetic traffic: every pipeline refuses them.
_MALFORMED = (b"{not json", b"[1, 2]", b'{"no": "field of any event"}', b"\xff\xfe{}", b"")


class InputStream:
    """The events of one configuration's run, in the order they are published."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        try:
            pipeline = load_pipeline(workload.pipeline)
        except PipelineError as exc:
            raise BenchmarkError(str(exc)) from exc
        self.event_id = pipeline.schema.event_id  # the events' id field
        self._traffic: Traffic | None = None
        self._replay: SampleReplay | None = None
        if pipeline.traffic is not None:
            self._traffic = pipeline.traffic(workload.keys, workload.seed)
        else:
            self._replay = SampleReplay(workload.pipeline)

    def profiles(self) -> list[tuple[bytes, bytes]]:
        """Feature updates for the features topic, so that profile lookups hit."""
        return [] if self._traffic is None else list(self._traffic.profiles())

    def backlog(self) -> list[Record]:
        """The pre-loaded records: valid events with the malformed ones spread evenly."""
        valid = self.events(self.workload.valid)
        n_bad = self.workload.malformed
        if self._traffic is not None:
            bad = list(self._traffic.malformed(n_bad, self.workload.seed))
        else:
            bad = [_MALFORMED[i % len(_MALFORMED)] for i in range(n_bad)]
        if not bad:
            return valid
        out: list[Record] = []
        every = max(1, len(valid) // len(bad))
        bad_values = iter(bad)
        for index, record in enumerate(valid):
            out.append(record)
            if index % every == every - 1:
                value = next(bad_values, None)
                if value is not None:
                    out.append(Record(record.key, value, None))
        out.extend(Record(valid[-1].key if valid else b"k", value, None) for value in bad_values)
        return out

    def events(self, n: int) -> list[Record]:
        """The next ``n`` valid events, padded to the workload's payload size."""
        if self._replay is not None:
            return self._replay.events(n)
        assert self._traffic is not None
        target = self.workload.payload_bytes
        out = []
        for key, value in self._traffic.events(n):
            event_id = str(orjson.loads(value)[self.event_id])
            if len(value) < target:
                value = _padded(value, target)
            out.append(Record(key, value, event_id))
        return out


def _padded(value: bytes, target: int) -> bytes:
    """``value`` (a JSON object) with a field no event declares, making it ``target`` bytes
    long (every pipeline ignores unknown fields)."""
    head = value.rstrip()
    room = target - len(head) - len(b',"pad":""')
    if not head.endswith(b"}") or room < 0:
        return value
    return head[:-1] + b',"pad":"' + b"x" * room + b'"}'


class SampleReplay:
    """A declared pipeline's sample, replayed from its start and then again, as often as asked.

    The n-th replay of an event gets the event id ``ID~n`` and its event time
    moved on by n times the sample's span (plus a day), so each replay is a new
    event, later than every earlier one: state keeps growing as it would on a
    longer log, and no event is a redelivery.
    """

    def __init__(self, ref: str) -> None:
        pipeline = load_pipeline(ref)
        if pipeline.sample is None:
            raise BenchmarkError(f"pipeline {ref!r} declares no sample to replay")
        self._events = [orjson.loads(line) for line in pipeline.sample()]
        if not self._events:
            raise BenchmarkError(f"the sample of pipeline {ref!r} is empty")
        schema = pipeline.schema
        self._key, self._id, self._time = schema.key, schema.event_id, schema.time
        self.event_id = schema.event_id
        times = [float(e[self._time]) for e in self._events] if self._time else [0.0]
        self._span = max(times) - min(times) + 86_400.0
        self._next = 0

    def events(self, n: int) -> list[Record]:
        out = []
        size = len(self._events)
        for position in range(self._next, self._next + n):
            lap, index = divmod(position, size)
            event = self._events[index]
            if lap:
                event = dict(event)
                event[self._id] = f"{event[self._id]}~{lap}"
                if self._time:
                    event[self._time] = event[self._time] + lap * self._span
            key = str(event[self._key]).encode()
            out.append(Record(key, orjson.dumps(event), str(event[self._id])))
        self._next += n
        return out


@dataclass(frozen=True, slots=True)
class Topics:
    """One configuration's topics and consumer group on the shared broker."""

    prefix: str

    @property
    def group(self) -> str:
        return self.prefix

    @property
    def events(self) -> str:
        return f"{self.prefix}-events"

    @property
    def features(self) -> str:
        return f"{self.prefix}-features"

    @property
    def scores(self) -> str:
        return f"{self.prefix}-scores"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}-dlq"

    def all(self) -> tuple[str, ...]:
        return (self.events, self.features, self.scores, self.dlq)


def create_topics(bootstrap: str, topics: Topics, partitions: int) -> None:
    """Create the four topics with the workload's partitions (workers check the count)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, partitions, 1) for name in topics.all()])
    for name, future in futures.items():
        try:
            future.result(timeout=15)
        except KafkaException as exc:
            raise BenchmarkError(f"cannot create topic {name!r}: {exc.args[0]}") from exc


def delete_topics(bootstrap: str, prefix: str) -> None:
    """Best effort: free the broker's memory (it keeps every record) once a run is measured."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        names = [n for n in admin.list_topics(timeout=10).topics if n.startswith(prefix)]
        if names:
            for future in admin.delete_topics(names, operation_timeout=10).values():
                future.result(timeout=15)
    except (KafkaException, TimeoutError):  # a broker that cannot delete keeps them
        return


class Publisher:
    """A confluent-kafka producer that knows where each partition ends (from delivery reports).

    Completion is judged against these ends, not against the broker's
    reported high watermark, which the embedded broker under-reports.
    """

    def __init__(self, bootstrap: str, linger_ms: int = 5) -> None:
        self.ends: dict[tuple[str, int], int] = {}
        self._errors: list[str] = []
        ends, errors = self.ends, self._errors

        # A closure over the two containers, not a bound method: the producer must not
        # keep this object alive (a cycle would outlive the broker and log disconnects).
        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                errors.append(str(error))
                return
            key = (str(message.topic()), int(message.partition() or 0))
            end = int(message.offset() or 0) + 1
            if end > ends.get(key, 0):
                ends[key] = end

        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": linger_ms,
                "partitioner": "murmur2_random",  # Java's: the partition Kafka clients expect
                "queue.buffering.max.messages": 1_000_000,
                "on_delivery": delivered,
            }
        )

    def ends_of(self, topic: str) -> dict[int, int]:
        return {p: end for (t, p), end in self.ends.items() if t == topic}

    def _produce(self, topic: str, key: bytes, value: bytes, timestamp_ms: int) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, timestamp=timestamp_ms)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(0.01)

    def publish(self, topic: str, records: Iterable[tuple[bytes, bytes]]) -> list[int]:
        """Produce as fast as the client goes; returns each record's timestamp (epoch ms)."""
        sent = []
        now_ms = int(time.time() * 1000)
        for index, (key, value) in enumerate(records):
            if index % 1000 == 0:
                now_ms = int(time.time() * 1000)
                self._producer.poll(0)
            self._produce(topic, key, value, now_ms)
            sent.append(now_ms)
        self.flush()
        return sent

    def publish_paced(self, topic: str, records: Sequence[Record], rate: float) -> list[int]:
        """Produce at ``rate`` records/s; each record's timestamp is when it was produced.

        The loop wakes at most once per millisecond and produces every record due
        by then: waking per record would cost the producer more CPU than the
        records themselves, CPU the measured process needs on a small machine.
        A record is stamped when it is actually produced, so the up-to-1 ms
        lateness shifts its schedule, never its measured latency.
        """
        sent = [0] * len(records)
        start = time.monotonic()
        index = 0
        while index < len(records):
            due = min(len(records), int((time.monotonic() - start) * rate) + 1)
            now_ms = int(time.time() * 1000)
            while index < due:
                record = records[index]
                self._produce(topic, record.key, record.value, now_ms)
                sent[index] = now_ms
                index += 1
            self._producer.poll(0)
            wait = start + index / rate - time.monotonic()
            time.sleep(max(wait, _PACING_TICK_S))
        self.flush()
        return sent

    def flush(self) -> None:
        remaining = self._producer.flush(60)
        if remaining or self._errors:
            raise BenchmarkError(
                f"publishing failed: {remaining} records undelivered, "
                f"errors: {'; '.join(self._errors[:3]) or 'none'}"
            )
