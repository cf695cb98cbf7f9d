"""The last stage: produce scores, dead letters and state changes, and learn when they land.

One idempotent confluent-kafka producer (librdkafka keeps per-partition order
even across its own retries) is fed from the event loop; a small thread polls
it for delivery reports. Messages are sent in *groups* (a batch's scores, a
chunk's dead letters): when every message of a group is acknowledged, the
group's callback runs on the event loop, and only then are the source
offsets finished, so nothing is committed before its output is durable.

The producer never gives a message up on a timeout (librdkafka's own
delivery timeout is off): an idempotent producer that keeps retrying writes a
partition's messages in order, while one that expires a message lets the
next ones overtake it. A watchdog on the loop measures how long the oldest
unacknowledged group has waited instead: past ``STREAMSCORE_DELIVERY_TIMEOUT_MS``
the ``on_stall`` callback tells the worker to stop intake, and after
``STREAMSCORE_EMIT_RETRIES`` further timeouts to fail readiness; it clears
when the broker answers. A message the producer does fail with an error
worth retrying (a fenced or fatal producer, which is replaced) is sent again
with backoff while every newer group is held back in order. Errors that no
retry can fix (a message too large for the broker) are reported to the
group's callback as ``failures``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast

from confluent_kafka import KafkaError, KafkaException, Producer

from streams.errors import BrokerError, EmitError

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]] | None

#: Errors that sending again cannot fix.
PERMANENT_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
    }
)

#: Errors after which the producer instance is unusable (or its identity is): a new one is made.
RENEW_PRODUCER_ERRORS = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError._FATAL,
    }
)

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0

#: librdkafka's own default (and the Java client's 1 MiB less a little); raised to what the
#: dead-letter topic takes (:class:`streams.kafka.topics.RecordLimits`).
PRODUCER_MESSAGE_BYTES = 1_000_000
#: The largest ``message.max.bytes`` librdkafka accepts.
MAX_PRODUCER_MESSAGE_BYTES = 1_000_000_000

#: Errors meaning "too large for the producer or the broker": a dead letter is cut to fit.
SIZE_ERRORS = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG_SIZE}
)


class Outgoing(NamedTuple):
    """One message to produce; ``partition=None`` lets the key choose (murmur2, as in Java).

    A tuple, not a dataclass: one is built per score, and tuples build fastest.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = None
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class Keyed:
    """Header-less messages to one topic, each partitioned by its key (a batch's scores).

    Produced with one ``produce_batch`` call instead of one ``produce`` per message;
    iterating gives the same messages as :class:`Outgoing` (retries, transactions).
    """

    topic: str
    keys: list[bytes | None]
    values: list[bytes]

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[Outgoing]:
        topic = self.topic
        return (
            Outgoing(topic, key, value) for key, value in zip(self.keys, self.values, strict=True)
        )


Messages = Sequence[Outgoing] | Keyed


@dataclass(slots=True)
class Delivered:
    """What a group's callback learns: permanent failures, and the highest offsets written."""

    failures: list[tuple[Outgoing, KafkaError]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    acked_at: float = 0.0  # wall clock, when the last message was acknowledged


class ProducerLike(Protocol):
    """The part of confluent_kafka.Producer the emitter uses (a fake one in unit tests)."""

    def produce(self, topic: str, **kwargs: Any) -> None: ...
    def produce_batch(self, topic: str, messages: list[dict[str, Any]], **kwargs: Any) -> int: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...
    def __len__(self) -> int: ...


class _Attempt:
    """Counts one send attempt's delivery reports (polling thread) and local refusals (loop).

    One report per message, so the count is the hot path of delivery: it is
    ``itertools.count``'s ``__next__``, one C call that the GIL makes atomic (as
    ``threading`` numbers its threads), not a lock taken per message.
    """

    __slots__ = (
        "_done", "_loop", "_next", "failed", "offsets", "producer", "size", "track_offsets",
    )  # fmt: skip

    def __init__(
        self,
        size: int,
        done: Callable[[_Attempt], None],
        loop: asyncio.AbstractEventLoop,
        track_offsets: bool,
        producer: ProducerLike,
    ) -> None:
        self.producer = producer  # the instance it was sent with
        self.size = size
        self._done = done
        self._loop = loop
        self.track_offsets = track_offsets
        self.failed: list[tuple[Outgoing, KafkaError]] = []
        self.offsets: dict[tuple[str, int], int] = {}
        # Reports come from the polling thread, refusals from the loop: the count is shared.
        self._next = itertools.count(1).__next__

    def refuse(self, message: Outgoing, error: KafkaError) -> None:
        """librdkafka would not even queue ``message`` (e.g. larger than it accepts): a failure."""
        self.failed.append((message, error))
        if self._next() == self.size:
            self._loop.call_soon_threadsafe(self._done, self)

    def ack(self, error: KafkaError | None, message: Any) -> None:
        """librdkafka's delivery report for one message (polling thread)."""
        if error is not None:
            failed = Outgoing(
                message.topic(), message.key(), message.value(), message.headers(),
                message.partition(),
            )  # fmt: skip
            self.failed.append((failed, error))
        elif self.track_offsets:
            key = (message.topic(), message.partition())
            offset = message.offset()
            if offset > self.offsets.get(key, -1):
                self.offsets[key] = offset
        if self._next() == self.size:  # the last report or refusal of this attempt
            self._loop.call_soon_threadsafe(self._done, self)


@dataclass(slots=True)
class _Group:
    """One caller's messages, across however many attempts they take."""

    callback: Callable[[Delivered], None]
    track_offsets: bool
    size: int
    sent_at: float  # monotonic, when the caller handed it over
    report: Delivered = field(default_factory=Delivered)
    attempts: int = 0
    failed_attempts: int = 0
    timeouts: int = 0  # delivery timeouts it has waited through so far


class Emitter:
    """An idempotent producer with grouped, loop-side delivery callbacks and a stall watchdog."""

    def __init__(
        self,
        client_config: dict[str, Any],
        *,
        client_id: str,
        max_queued: int,
        delivery_timeout_ms: int = 30_000,
        retries_before_stall: int = 5,
        max_message_bytes: int = PRODUCER_MESSAGE_BYTES,
        producer_factory: Callable[[], ProducerLike] | None = None,
    ) -> None:
        self._queue_limit = max(100_000, max_queued)
        config: dict[str, Any] = {
            **client_config,
            **producer_size_config(max_message_bytes),
            "client.id": client_id,
            "enable.idempotence": True,  # acks=all, and order kept through retries
            "linger.ms": 1,
            "partitioner": "murmur2_random",  # the Java client's key -> partition mapping
            "queue.buffering.max.messages": self._queue_limit,
            "delivery.timeout.ms": 0,  # never expire: expiring one message reorders the rest
            "error_cb": _log_client_error,
        }

        def create() -> ProducerLike:
            try:
                return cast(ProducerLike, Producer(config))
            except KafkaException as exc:
                raise BrokerError(f"cannot create a Kafka producer: {exc}") from exc

        self._create = producer_factory or create
        self._producer: ProducerLike = self._create()
        self._retiring: list[ProducerLike] = []  # replaced producers, polled until drained
        self._renew = False
        self.delivery_timeout = delivery_timeout_ms / 1000
        self.retries_before_stall = retries_before_stall
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._thread: threading.Thread | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._unacked: dict[int, _Group] = {}  # by id, oldest first
        self._retrying: set[int] = set()  # ids of groups waiting to be sent again
        self._held: deque[tuple[Messages, _Group]] = deque()  # newer sends, in order
        self._last_error: KafkaError | None = None
        self._holding = False  # whether on_stall was last told to stop intake
        self.stalled: str | None = None  # why outputs are not getting through, if they are not
        self.on_stall: Callable[[str | None], None] = lambda reason: None
        self.on_retry: Callable[[int], None] = lambda count: None  # outputs overdue or resent
        #: Seconds from a group handed over to all of it acknowledged (a histogram's observe).
        self.on_acked: Callable[[float], None] = lambda seconds: None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._running = True
        self._thread = threading.Thread(target=self._poll, name="streamscore-emit", daemon=True)
        self._thread.start()
        self._watch()

    def _poll(self) -> None:
        while self._running:
            self._producer.poll(0.05)
            if self._retiring:  # let a replaced producer report what it still holds
                for old in list(self._retiring):
                    old.poll(0)
                    if not len(old):
                        self._retiring.remove(old)

    def _watch(self) -> None:
        """Re-check the oldest output's wait a few times per delivery timeout (at most 1 s)."""
        assert self._loop is not None
        self._check()
        if self._running:
            interval = min(1.0, self.delivery_timeout / 5)
            self._watchdog = self._loop.call_later(interval, self._watch)

    @property
    def retrying(self) -> bool:
        return bool(self._retrying)

    def send(
        self,
        messages: Messages,
        on_delivered: Callable[[Delivered], None],
        *,
        track_offsets: bool = False,
        source: Any = None,
    ) -> None:
        """Produce ``messages`` in order; call ``on_delivered`` on the loop once all landed.

        ``source`` (the source partition) matters only to the transactional emitter.
        """
        if self._loop is None:
            raise EmitError("the emitter is not started")
        group = _Group(on_delivered, track_offsets, len(messages), time.monotonic())
        if not messages:
            group.report.acked_at = time.time()
            self._loop.call_soon(on_delivered, group.report)
            return
        self._unacked[id(group)] = group
        if self._retrying:  # keep order: nothing overtakes a message being retried
            self._held.append((messages if isinstance(messages, Keyed) else list(messages), group))
            return
        self._produce(messages, group)

    def _produce(self, messages: Messages, group: _Group) -> None:
        assert self._loop is not None
        if self._renew:
            self._renew = False
            log.warning("the producer can no longer send (fenced or fatal error): replacing it")
            self._retiring.append(self._producer)
            self._producer = self._create()
        group.attempts += 1
        attempt = _Attempt(
            len(messages), lambda a: self._attempt_done(a, group), self._loop,
            group.track_offsets, self._producer,
        )  # fmt: skip
        ack = attempt.ack
        producer = self._producer
        if isinstance(messages, Keyed) and len(producer) + len(messages) <= self._queue_limit:
            # Room for all of them, so none can fail on a full queue and let a later one
            # overtake it: one call, the partitioner still choosing by key.
            batch: list[dict[str, Any]] = [
                {"key": key, "value": value}
                for key, value in zip(messages.keys, messages.values, strict=True)
            ]
            try:
                queued = producer.produce_batch(messages.topic, batch, on_delivery=ack)
            except KafkaException as exc:
                raise EmitError(f"cannot produce to {messages.topic!r}: {exc}") from exc
            if queued != len(batch):  # refused one by one: each a failure of this group
                for m in batch:
                    if "_error" in m:
                        attempt.refuse(Outgoing(messages.topic, m["key"], m["value"]), m["_error"])
            return
        produce = producer.produce
        for message in messages:
            while True:
                try:
                    produce(
                        message.topic,
                        value=message.value,
                        key=message.key,
                        headers=message.headers,
                        partition=-1 if message.partition is None else message.partition,
                        on_delivery=ack,
                    )
                    break
                except BufferError:
                    # librdkafka's local queue is full: let the polling thread catch up.
                    self._producer.poll(0.005)
                except KafkaException as exc:
                    # Refused before it was queued (larger than the producer takes, say): a
                    # failure of this message, reported to its group like a broker's refusal.
                    # Raising here would stop the worker on a record it reads again at start.
                    attempt.refuse(message, _kafka_error(exc))
                    break

    def _attempt_done(self, attempt: _Attempt, group: _Group) -> None:
        report = group.report
        for key, offset in attempt.offsets.items():
            report.offsets[key] = max(offset, report.offsets.get(key, -1))
        retry: list[Outgoing] = []
        for message, error in attempt.failed:
            renew = error.code() in RENEW_PRODUCER_ERRORS or error.fatal()
            if renew and attempt.producer is self._producer:  # not one already replaced
                self._renew = True
            if error.code() in PERMANENT_ERRORS:
                report.failures.append((message, error))
            else:
                retry.append(message)
        if not retry:
            self._unacked.pop(id(group), None)
            if id(group) in self._retrying:
                self._retrying.discard(id(group))
                self._release()
            report.acked_at = time.time()
            self.on_acked(time.monotonic() - group.sent_at)
            group.callback(report)
            self._check()
            return
        self._retrying.add(id(group))
        group.failed_attempts += 1
        self._last_error = attempt.failed[0][1]
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (group.failed_attempts - 1))
        log.warning(
            "%d of %d messages not acknowledged (%s); sending again in %.1fs",
            len(retry), attempt.size, self._last_error, delay,
        )  # fmt: skip
        assert self._loop is not None
        self.on_retry(len(retry))
        self._loop.call_later(delay, self._produce, retry, group)
        self._check()

    def _release(self) -> None:
        """Send the groups held behind a retry, in order, once no retry is pending."""
        while self._held and not self._retrying:
            messages, group = self._held.popleft()
            self._produce(messages, group)

    def _check(self) -> None:
        """Stop intake while outputs are overdue or resent; fail readiness past the budget."""
        now = time.monotonic()
        overdue = 0.0
        for group in self._unacked.values():  # oldest first: stop at the first one in time
            waited = now - group.sent_at
            timeouts = int(waited // self.delivery_timeout)
            if timeouts == 0:
                break
            overdue = max(overdue, waited)
            if timeouts > group.timeouts:
                self.on_retry(group.size * (timeouts - group.timeouts))
                group.timeouts = timeouts
        resent = max(
            (self._unacked[i].failed_attempts for i in self._retrying if i in self._unacked),
            default=0,
        )
        timeouts = int(overdue // self.delivery_timeout)
        if resent > self.retries_before_stall:
            stall = f"cannot deliver to the broker after {resent} attempts: {self._last_error}"
        elif timeouts > self.retries_before_stall:
            stall = f"no acknowledgement from the broker for {overdue:.1f}s"
        else:
            stall = None
        if stall is not None:
            if self.stalled is None:
                log.error("%s; intake stays stopped until it gets through", stall)
                self.stalled = stall
                self.on_stall(stall)
            self._holding = True
            return
        if resent or timeouts:
            if not self._holding or self.stalled is not None:
                self.stalled = None
                why = self._last_error if resent else f"no acknowledgement for {overdue:.1f}s"
                self.on_stall(f"retrying delivery: {why}")
            self._holding = True
            return
        if self._holding:
            log.warning("deliveries get through again")
            self._holding = False
            self.stalled = None
            self.on_stall(None)

    async def close(self, timeout: float = 30.0) -> int:
        """Flush what is queued and stop; return how many messages could not be delivered."""
        self._running = False
        if self._watchdog is not None:
            self._watchdog.cancel()
        loop = asyncio.get_running_loop()
        if self._thread is not None:
            await loop.run_in_executor(None, self._thread.join)
            self._thread = None
        remaining: int = await loop.run_in_executor(None, self._producer.flush, timeout)
        if remaining:
            log.error("%d messages were not delivered before shutdown", remaining)
        return remaining


def producer_size_config(max_message_bytes: int) -> dict[str, Any]:
    """librdkafka settings for messages up to ``max_message_bytes`` (a large dead letter).

    ``batch.size`` stays at its default or below the limit: a batch of several messages
    must fit the topic too, and one message larger than a batch goes in a batch of its own.
    """
    limit = max(1_000, min(MAX_PRODUCER_MESSAGE_BYTES, max_message_bytes))
    return {"message.max.bytes": limit, "batch.size": min(1_000_000, limit)}


def _kafka_error(exc: KafkaException) -> KafkaError:
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        return error
    return KafkaError(KafkaError._FAIL, str(exc))


def _log_client_error(error: KafkaError) -> None:
    """librdkafka's client-level errors (connection trouble, fatal producer states)."""
    if error.fatal():
        log.error("producer: fatal error %s", error)
    else:
        log.debug("producer: %s", error)
