"""The emitter with a fake producer: grouped acknowledgements, retries in order, stalls."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.kafka import emit
from streams.kafka.emit import Delivered, Emitter, Keyed, Outgoing


@dataclass
class FakeMessage:
    _topic: str
    _key: bytes | None
    _value: bytes | None
    _partition: int
    _offset: int

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def headers(self) -> None:
        return None


class FakeProducer:
    """Records what is produced; the test decides when and how each is acknowledged."""

    def __init__(self) -> None:
        self.produced: list[bytes | None] = []
        self.pending: list[tuple[Any, FakeMessage]] = []
        self.offset = 0
        self.batch_calls = 0
        self.queued_elsewhere = 0  # messages librdkafka holds that this fake does not model
        self.max_bytes: int | None = None  # larger values are refused before queueing

    def produce(self, topic: str, **kwargs: Any) -> None:
        if self.max_bytes is not None and len(kwargs["value"] or b"") > self.max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        partition = kwargs["partition"] if kwargs["partition"] >= 0 else 0
        message = FakeMessage(topic, kwargs["key"], kwargs["value"], partition, self.offset)
        self.offset += 1
        self.produced.append(kwargs["value"])
        self.pending.append((kwargs["on_delivery"], message))

    def produce_batch(self, topic: str, messages: list[dict[str, Any]], **kwargs: Any) -> int:
        self.batch_calls += 1
        queued = 0
        for m in messages:  # partitioned by key, as librdkafka's partitioner does
            try:
                self.produce(
                    topic, key=m["key"], value=m["value"], partition=-1,
                    on_delivery=kwargs["on_delivery"],
                )  # fmt: skip
            except KafkaException as exc:  # as librdkafka: the error goes in the message
                m["_error"] = exc.args[0]
                continue
            queued += 1
        return queued

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.pending) + self.queued_elsewhere

    def acknowledge(self, error: int | None = None) -> None:
        pending, self.pending = self.pending, []
        for callback, message in pending:
            callback(KafkaError(error) if error is not None else None, message)


async def until(condition: Any, timeout: float = 5.0) -> None:
    """Await a condition that another thread's callbacks make true, with a deadline."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emit, "BACKOFF_FIRST", 0.01)


def emitter(
    retries_before_stall: int = 5, delivery_timeout_ms: int = 30_000
) -> tuple[Emitter, FakeProducer, list[str | None]]:
    producer = FakeProducer()
    built = Emitter(
        {}, client_id="t", max_queued=10, retries_before_stall=retries_before_stall,
        delivery_timeout_ms=delivery_timeout_ms, producer_factory=lambda: producer,
    )  # fmt: skip
    stalls: list[str | None] = []
    built.on_stall = stalls.append
    built.start(asyncio.get_running_loop())
    return built, producer, stalls


def messages(*values: bytes) -> list[Outgoing]:
    return [Outgoing("t", b"k", v) for v in values]


async def test_a_group_is_reported_once_all_its_messages_are_acknowledged() -> None:
    em, producer, _ = emitter()
    reports: list[Delivered] = []
    em.send(messages(b"a", b"b"), reports.append, track_offsets=True)
    assert producer.produced == [b"a", b"b"]
    producer.acknowledge()
    await until(lambda: reports)
    assert reports[0].failures == []
    assert reports[0].offsets == {("t", 0): 1}
    await em.close()


async def test_keyed_messages_are_produced_in_one_call_in_order() -> None:
    em, producer, _ = emitter()
    reports: list[Delivered] = []
    em.send(Keyed("t", [b"k1", b"k2", None], [b"a", b"b", b"c"]), reports.append)
    assert producer.batch_calls == 1
    assert producer.produced == [b"a", b"b", b"c"]
    assert [m.key() for _, m in producer.pending] == [b"k1", b"k2", None]
    producer.acknowledge()
    await until(lambda: reports)
    assert reports[0].failures == []
    await em.close()


async def test_keyed_messages_go_one_by_one_when_the_queue_has_no_room_for_all() -> None:
    # A batch call that found the queue full part-way would queue a later message
    # after an earlier one failed: without room for all, each is produced on its own.
    em, producer, _ = emitter()
    producer.queued_elsewhere = 100_000 - 2
    reports: list[Delivered] = []
    em.send(Keyed("t", [b"k1", b"k2", b"k3"], [b"a", b"b", b"c"]), reports.append)
    assert producer.batch_calls == 0
    assert producer.produced == [b"a", b"b", b"c"]
    producer.acknowledge()
    await until(lambda: reports)
    await em.close()


@pytest.mark.usefixtures("fast_backoff")
async def test_keyed_messages_not_acknowledged_are_sent_again_with_their_keys() -> None:
    em, producer, _ = emitter()
    reports: list[Delivered] = []
    em.send(Keyed("t", [b"k1", b"k2"], [b"a", b"b"]), reports.append)
    producer.acknowledge(KafkaError._MSG_TIMED_OUT)
    await until(lambda: len(producer.produced) == 4)
    assert producer.produced == [b"a", b"b", b"a", b"b"]
    assert [m.key() for _, m in producer.pending] == [b"k1", b"k2"]
    producer.acknowledge()
    await until(lambda: reports)
    assert reports[0].failures == []
    await em.close()


@pytest.mark.usefixtures("fast_backoff")
async def test_unacknowledged_messages_are_sent_again_and_newer_ones_wait_their_turn() -> None:
    em, producer, stalls = emitter()
    first: list[Delivered] = []
    second: list[Delivered] = []
    em.send(messages(b"a"), first.append)
    producer.acknowledge(KafkaError._MSG_TIMED_OUT)
    await until(lambda: em.retrying)
    em.send(messages(b"b"), second.append)  # must not overtake "a"
    await until(lambda: len(producer.produced) == 2)
    assert producer.produced == [b"a", b"a"]
    assert stalls[0] is not None
    assert "retrying" in stalls[0]
    producer.acknowledge()
    await until(lambda: len(producer.produced) == 3)
    assert producer.produced == [b"a", b"a", b"b"]
    assert first
    assert not first[0].failures
    assert stalls[-1] is None
    producer.acknowledge()
    await until(lambda: second)
    await em.close()


@pytest.mark.usefixtures("fast_backoff")
async def test_past_the_retry_budget_the_emitter_says_it_is_stalled_and_keeps_trying() -> None:
    em, producer, stalls = emitter(retries_before_stall=1)
    reports: list[Delivered] = []
    em.send(messages(b"a"), reports.append)
    for attempt in range(3):
        await until(lambda: len(producer.pending) == 1)
        producer.acknowledge(KafkaError.NOT_ENOUGH_REPLICAS)
        await until(lambda n=attempt: len(producer.produced) >= n + 2 or em.stalled is not None)
    assert em.stalled is not None
    assert "after" in em.stalled
    await until(lambda: len(producer.pending) == 1)
    producer.acknowledge()
    await until(lambda: reports)
    assert em.stalled is None
    assert stalls[-1] is None
    await em.close()


async def test_an_overdue_output_stops_intake_then_readiness_and_is_never_expired() -> None:
    # The producer keeps the message (it is never timed out and sent out of order);
    # the watchdog only reports how long it has waited.
    em, producer, stalls = emitter(retries_before_stall=2, delivery_timeout_ms=40)
    retried: list[int] = []
    em.on_retry = retried.append
    reports: list[Delivered] = []
    em.send(messages(b"a", b"b"), reports.append)
    await until(lambda: bool(stalls) and stalls[-1] is not None)
    assert "retrying delivery: no acknowledgement" in str(stalls[-1])
    assert em.stalled is None  # intake stops first; readiness holds a while longer
    await until(lambda: em.stalled is not None)
    assert "no acknowledgement from the broker" in em.stalled
    assert sum(retried) >= 2 * 3  # both messages, through three delivery timeouts
    em.send(messages(b"c"), reports.append)
    assert producer.produced == [b"a", b"b", b"c"]  # sent once each, in order
    producer.acknowledge()
    await until(lambda: len(reports) == 2 and stalls[-1] is None)
    assert em.stalled is None
    await em.close()


async def test_an_error_no_retry_can_fix_is_reported_to_the_caller() -> None:
    em, producer, _ = emitter()
    reports: list[Delivered] = []
    em.send(messages(b"x" * 10, b"ok"), reports.append)
    callbacks = producer.pending
    producer.pending = []
    callbacks[0][0](KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), callbacks[0][1])
    callbacks[1][0](None, callbacks[1][1])
    await until(lambda: reports)
    [(message, error)] = reports[0].failures
    assert message.value == b"x" * 10
    assert error.code() == KafkaError.MSG_SIZE_TOO_LARGE
    assert not em.retrying
    await em.close()


@pytest.mark.usefixtures("fast_backoff")
async def test_a_fenced_producer_is_replaced_and_the_messages_sent_on_the_new_one() -> None:
    made: list[FakeProducer] = []

    def factory() -> FakeProducer:
        made.append(FakeProducer())
        return made[-1]

    em = Emitter({}, client_id="t", max_queued=10, producer_factory=factory)
    em.start(asyncio.get_running_loop())
    reports: list[Delivered] = []
    em.send(messages(b"a", b"b"), reports.append)
    made[0].acknowledge(KafkaError.PRODUCER_FENCED)
    await until(lambda: len(made) == 2 and len(made[1].produced) == 2)
    assert made[1].produced == [b"a", b"b"]
    made[1].acknowledge()
    await until(lambda: reports)
    assert reports[0].failures == []
    await em.close()


async def test_a_message_the_producer_refuses_to_queue_is_a_failure_of_its_group() -> None:
    # librdkafka refuses a message over its message.max.bytes before queueing it; raising
    # would stop the worker on a record it reads again after every restart.
    em, producer, _ = emitter()
    producer.max_bytes = 10
    reports: list[Delivered] = []
    em.send(messages(b"small", b"x" * 11, b"also small"), reports.append)
    assert producer.produced == [b"small", b"also small"]
    producer.acknowledge()
    await until(lambda: reports)
    [(refused, error)] = reports[0].failures
    assert refused.value == b"x" * 11
    assert error.code() == KafkaError.MSG_SIZE_TOO_LARGE
    await em.close()


async def test_refusals_of_a_batch_call_are_failures_and_the_rest_is_delivered() -> None:
    em, producer, _ = emitter()
    producer.max_bytes = 3
    reports: list[Delivered] = []
    em.send(Keyed("t", [b"k1", b"k2", b"k3"], [b"abcd", b"ab", b"abcde"]), reports.append)
    assert producer.produced == [b"ab"]
    producer.acknowledge()
    await until(lambda: reports)
    assert sorted(m.value for m, _ in reports[0].failures) == [b"abcd", b"abcde"]
    assert {e.code() for _, e in reports[0].failures} == {KafkaError.MSG_SIZE_TOO_LARGE}
    await em.close()


async def test_a_group_refused_whole_is_still_reported() -> None:
    em, producer, _ = emitter()
    producer.max_bytes = 0
    reports: list[Delivered] = []
    em.send(messages(b"a", b"b"), reports.append)
    await until(lambda: reports)
    assert len(reports[0].failures) == 2
    await em.close()


async def test_acknowledgement_time_is_reported_per_group() -> None:
    em, producer, _ = emitter()
    waits: list[float] = []
    em.on_acked = waits.append
    reports: list[Delivered] = []
    em.send(messages(b"a"), reports.append)
    await asyncio.sleep(0.02)
    producer.acknowledge()
    await until(lambda: reports)
    assert len(waits) == 1
    assert 0.02 <= waits[0] < 5
    await em.close()


def test_an_attempt_is_done_once_when_reports_and_refusals_race() -> None:
    """Reports count on the polling thread while refusals count on the loop: done exactly once,
    after the last of them, with every refusal kept."""
    calls: list[int] = []

    class Loop:
        def call_soon_threadsafe(self, callback: Any, attempt: Any) -> None:
            calls.append(len(attempt.failed))

    reports, refusals = 200_000, 1_000
    attempt = emit._Attempt(reports + refusals, lambda a: None, Loop(), False, None)  # type: ignore[arg-type]
    refused = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)

    def poll() -> None:
        for _ in range(reports):
            attempt.ack(None, None)

    thread = threading.Thread(target=poll)
    thread.start()
    for _ in range(refusals):
        attempt.refuse(Outgoing("t", None, b"x"), refused)
    thread.join()
    assert calls == [refusals]
