"""``streamscore dlq replay``: send dead letters back to the topic they came from.

After a fix (a model that now scores what it used to fail on, a producer that
now sends what it should have), the dead letters still hold the original
records byte for byte. Replaying one publishes its key and value unchanged,
with its original headers and without the ``dlq.*`` ones, to the partition of
the topic it was consumed from (``dlq.source.topic``/``dlq.source.partition``),
so the entity's events and state stay co-partitioned whatever partitioner the
original producer used. The worker then scores or dead-letters it again, as
its content now dictates.

The end of the dead-letter topic is fixed before anything is published: a
replayed record that fails again lands after that end and is not replayed a
second time by the same run.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from schemas import deadletter
from streams.cli.common import EXIT_USAGE, fail, settings_or_exit
from streams.errors import BrokerError
from streams.kafka.topics import AuthFailures
from streams.settings import Settings

Header = tuple[str, str | bytes | None]
HeaderList = Sequence[Header]

#: Headers the worker adds to a dead letter; a replay removes every header with this prefix.
DLQ_PREFIX = "dlq."


@dataclass(frozen=True, slots=True)
class Replay:
    """One dead letter and where it goes back to."""

    dlq_partition: int
    dlq_offset: int
    stage: str
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[Header]


def position(message: Message) -> tuple[int, int]:
    """(partition, offset) of a consumed record (never None for a record without error)."""
    return int(message.partition() or 0), int(message.offset() or 0)


def last_header(headers: HeaderList, name: str) -> str | None:
    """The last value of a header (a dead letter replayed and failed again has several)."""
    for header, value in reversed(headers):
        if header == name:
            if isinstance(value, bytes):
                return value.decode("utf-8", errors="replace")
            return value
    return None


def original_headers(headers: HeaderList) -> list[Header]:
    """The record's own headers: everything but ``dlq.*``, in order."""
    return [(name, value) for name, value in headers if not name.startswith(DLQ_PREFIX)]


def was_cut(headers: HeaderList) -> bool:
    """Whether the dead letter was cut to fit (the notes after its own ``dlq.*`` headers)."""
    names = [name for name, _ in headers]
    if deadletter.APP not in names:
        return False
    ours = len(names) - names[::-1].index(deadletter.APP)
    cut = {deadletter.VALUE_BYTES, deadletter.KEY_BYTES, deadletter.HEADERS_DROPPED}
    return any(name in cut for name in names[ours:])


def parse_since(text: str) -> int:
    """Epoch milliseconds of ``--since``: epoch seconds or ISO 8601 (UTC when no zone)."""
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(
            f"{text!r} is neither epoch seconds nor an ISO 8601 time like 2026-11-23T10:00:00Z"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def to_replay(message: Message, inputs: frozenset[str]) -> Replay | str:
    """The replay of one DLQ record, or the reason it is skipped."""
    raw = message.headers() or []
    headers: HeaderList = list(raw.items()) if isinstance(raw, dict) else raw
    stage = last_header(headers, deadletter.STAGE)
    topic = last_header(headers, deadletter.SOURCE_TOPIC)
    partition = last_header(headers, deadletter.SOURCE_PARTITION)
    if stage is None or topic is None or partition is None or not partition.isdigit():
        return "not a dead letter (no dlq.stage/dlq.source.* headers)"
    if topic not in inputs:
        return f"source topic {topic!r} is not an input of this app"
    if was_cut(headers):
        return "cut to fit the DLQ topic (dlq.value.bytes): the whole record is not there to replay"
    dlq_partition, dlq_offset = position(message)
    return Replay(
        dlq_partition=dlq_partition,
        dlq_offset=dlq_offset,
        stage=stage,
        topic=topic,
        partition=int(partition),
        key=message.key(),
        value=message.value(),
        headers=original_headers(headers),
    )


@click.group()
def dlq() -> None:
    """Work with the dead-letter topic (STREAMSCORE_DLQ_TOPIC)."""


@dlq.command()
@click.option(
    "--stage", "stages", multiple=True, type=click.Choice(deadletter.STAGES),
    help="Only dead letters of this stage (repeatable; default: all).",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print what would be replayed; publish nothing.")
@click.option(
    "--since", default=None,
    help="Only dead letters written at or after this time (epoch seconds or ISO 8601).",
)  # fmt: skip
@click.option(
    "--from-offset", type=click.IntRange(min=0), default=None,
    help="Start at this offset in every partition of the DLQ (default: the beginning).",
)  # fmt: skip
@click.option(
    "--timeout", default=60.0, show_default=True, type=click.FloatRange(min=1),
    help="Seconds allowed for reading the DLQ to its end.",
)  # fmt: skip
def replay(
    stages: tuple[str, ...],
    dry_run: bool,
    since: str | None,
    from_offset: int | None,
    timeout: float,
) -> None:
    """Re-publish dead letters to the topic and partition they came from, then stop."""
    if since is not None and from_offset is not None:
        fail("--since and --from-offset cannot be combined", EXIT_USAGE)
    since_ms = None
    if since is not None:
        try:
            since_ms = parse_since(since)
        except click.BadParameter as exc:
            fail(f"--since: {exc.message}", EXIT_USAGE)
    settings = settings_or_exit()
    try:
        plan, skipped = _read(settings, set(stages), since_ms, from_offset, timeout)
        by_stage = Counter(r.stage for r in plan)
        if dry_run:
            for r in plan:
                click.echo(
                    f"would replay {settings.dlq_topic}[{r.dlq_partition}]@{r.dlq_offset} "
                    f"stage={r.stage} key={r.key!r} -> {r.topic}[{r.partition}]"
                )
        else:
            _publish(settings, plan)
    except BrokerError as exc:
        fail(str(exc))
    verb = "would replay" if dry_run else "replayed"
    counts = ", ".join(f"{stage}={by_stage[stage]}" for stage in sorted(by_stage)) or "none"
    click.echo(f"{verb} {len(plan)} dead letters from {settings.dlq_topic} (by stage: {counts})")
    for reason, count in sorted(skipped.items()):
        click.echo(f"skipped {count}: {reason}")


def _consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        **settings.kafka_client_config(),
        "group.id": f"{settings.app_id}-dlq-replay-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": settings.fetch_max_wait_ms or 100,
    }


def _read(
    settings: Settings,
    stages: set[str],
    since_ms: int | None,
    from_offset: int | None,
    timeout: float,
) -> tuple[list[Replay], Counter[str]]:
    """Every dead letter between the start and the end fixed now, filtered."""
    deadline = time.monotonic() + timeout
    auth = AuthFailures()
    consumer = Consumer({**_consumer_config(settings), "error_cb": auth})
    try:
        try:
            partitions = _partitions(consumer, settings, settings.dlq_topic, timeout)
        except KafkaException as exc:
            raise auth.unreachable(consumer, settings, exc) from exc
        ends = _end_offsets(consumer, settings.dlq_topic, partitions, deadline)
        starts = _start_offsets(consumer, settings.dlq_topic, ends, since_ms, from_offset, timeout)
        inputs = frozenset({settings.events_topic, settings.features_topic})
        plan: list[Replay] = []
        skipped: Counter[str] = Counter()
        for message in _until(consumer, settings.dlq_topic, starts, ends, deadline):
            item = to_replay(message, inputs)
            if isinstance(item, str):
                skipped[item] += 1
            elif stages and item.stage not in stages:
                skipped["other stage (--stage)"] += 1
            else:
                plan.append(item)
        for topic in {r.topic for r in plan}:
            count = len(_partitions(consumer, settings, topic, timeout))
            if any(r.partition >= count for r in plan if r.topic == topic):
                raise BrokerError(
                    f"topic {topic!r} now has {count} partitions, fewer than its dead letters "
                    "came from; replaying them elsewhere would break per-key order"
                )
        return plan, skipped
    except KafkaException as exc:
        raise BrokerError(
            f"cannot read {settings.dlq_topic!r} at {settings.bootstrap_servers}: {exc.args[0]}"
        ) from exc
    finally:
        consumer.close()


def _partitions(consumer: Consumer, settings: Settings, topic: str, timeout: float) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=timeout)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise BrokerError(f"topic {topic!r} does not exist; check STREAMSCORE_DLQ_TOPIC")
    return sorted(found.partitions)


def _end_offsets(
    consumer: Consumer, topic: str, partitions: list[int], deadline: float
) -> dict[int, int]:
    """Each partition's end now, read rather than trusted.

    The reported high watermark is a lower bound (the embedded broker can
    under-report it), so the tail is read from there until the broker says
    end of partition.
    """
    ends: dict[int, int] = {}
    probes = []
    for partition in partitions:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=max(1.0, deadline - time.monotonic())
        )
        ends[partition] = max(low, high)
        probes.append(TopicPartition(topic, partition, max(low, high - 1)))
    for message in _drain(consumer, probes, deadline, "the end of"):
        partition, offset = position(message)
        ends[partition] = max(ends[partition], offset + 1)
    return ends


def _start_offsets(
    consumer: Consumer,
    topic: str,
    ends: dict[int, int],
    since_ms: int | None,
    from_offset: int | None,
    timeout: float,
) -> dict[int, int]:
    if from_offset is not None:
        return {p: min(from_offset, end) for p, end in ends.items()}
    if since_ms is None:
        lows = {}
        for partition in ends:
            low, _ = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout)
            lows[partition] = low
        return lows
    found = consumer.offsets_for_times(
        [TopicPartition(topic, p, since_ms) for p in ends], timeout=timeout
    )
    # -1: nothing at or after that time in this partition.
    return {tp.partition: ends[tp.partition] if tp.offset < 0 else tp.offset for tp in found}


def _until(
    consumer: Consumer, topic: str, starts: dict[int, int], ends: dict[int, int], deadline: float
) -> Iterator[Message]:
    """The records of ``[start, end)`` of every partition."""
    wanted = [TopicPartition(topic, p, starts[p]) for p in ends if starts[p] < ends[p]]
    for message in _drain(consumer, wanted, deadline, "the dead letters of", ends):
        partition, offset = position(message)
        if offset < ends[partition]:
            yield message


def _drain(
    consumer: Consumer,
    assignment: list[TopicPartition],
    deadline: float,
    what: str,
    ends: dict[int, int] | None = None,
) -> Iterator[Message]:
    """Records of the assigned partitions until each reports its end (or reaches ``ends``)."""
    if not assignment:
        return
    topic = assignment[0].topic
    consumer.assign(assignment)
    open_partitions = {tp.partition for tp in assignment}
    try:
        while open_partitions:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"could not read {what} {topic!r} in time (partitions "
                    f"{sorted(open_partitions)} still open); try a larger --timeout"
                )
            for message in consumer.consume(10_000, 0.2):
                error = message.error()
                partition, offset = position(message)
                if error is None:
                    yield message
                    # New dead letters keep arriving while a worker runs: stop at the end
                    # fixed earlier instead of waiting for an end of partition.
                    if ends is not None and offset + 1 >= ends[partition]:
                        open_partitions.discard(partition)
                elif error.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(partition)
                else:
                    raise BrokerError(f"reading {topic!r} failed: {error.str()}")
    finally:
        consumer.unassign()


def _publish(settings: Settings, plan: list[Replay]) -> None:
    """Produce every replay and wait for all acknowledgements."""
    if not plan:
        return
    producer = Producer(
        {
            **settings.kafka_client_config(),
            "client.id": f"{settings.app_id}-dlq-replay",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    failures: list[str] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(f"{message.topic()}[{message.partition()}]: {error.str()}")

    for r in plan:
        while True:
            try:
                producer.produce(
                    r.topic, key=r.key, value=r.value, headers=r.headers or None,
                    partition=r.partition, on_delivery=delivered,
                )  # fmt: skip
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    if failures or remaining:
        first = failures[0] if failures else f"{remaining} still queued after 60 s"
        raise BrokerError(
            f"{len(failures) + remaining} of {len(plan)} replays were not delivered ({first}); "
            "running the replay again re-publishes the delivered ones too (their scores "
            "repeat the same event_id)"
        )
