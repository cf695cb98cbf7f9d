"""The last stage: produce scores, dead letters and state changes, and learn when they land.

One idempotent confluent-kafka producer (librdkafka keeps per-partition order
even across its own retries) is fed from the event loop; a small thread polls
it for delivery reports. Messages are sent in *groups* (a batch's scores, a
chunk's dead letters): when every message of a group is acknowledged, the
group's callback runs on the event loop, and only then are the source
offsets finished, so nothing is committed before its output is durable.

When the broker does not acknowledge a message (it is down, or slower than
``STREAMSCORE_DELIVERY_TIMEOUT_MS``), the emitter sends it again with
backoff, and meanwhile holds every newer group back in order, so a retry
never lets a later score overtake an earlier one. The ``on_stall`` callback
tells the worker to stop intake (and, past ``STREAMSCORE_EMIT_RETRIES``, to
fail readiness); retrying goes on until the broker answers, because giving
up would lose the output. Errors that no retry can fix (a message too large
for the broker) are reported to the group's callback as ``failures``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
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


class Outgoing(NamedTuple):
    """One message to produce; ``partition=None`` lets the key choose (murmur2, as in Java).

    A tuple, not a dataclass: one is built per score, and tuples build fastest.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = None
    partition: int | None = None


@dataclass(slots=True)
class Delivered:
    """What a group's callback learns: permanent failures, and the highest offsets written."""

    failures: list[tuple[Outgoing, KafkaError]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    acked_at: float = 0.0  # wall clock, when the last message was acknowledged


class ProducerLike(Protocol):
    """The part of confluent_kafka.Producer the emitter uses (a fake one in unit tests)."""

    def produce(self, topic: str, **kwargs: Any) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...
    def __len__(self) -> int: ...


class _Attempt:
    """Counts one send attempt's delivery reports on the polling thread."""

    __slots__ = (
        "_done", "_loop", "_remaining", "failed", "offsets", "producer", "size", "track_offsets",
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
        self._remaining = size
        self._done = done
        self._loop = loop
        self.track_offsets = track_offsets
        self.failed: list[tuple[Outgoing, KafkaError]] = []
        self.offsets: dict[tuple[str, int], int] = {}

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
        self._remaining -= 1  # only the polling thread runs this
        if self._remaining == 0:
            self._loop.call_soon_threadsafe(self._done, self)


@dataclass(slots=True)
class _Group:
    """One caller's messages, across however many attempts they take."""

    callback: Callable[[Delivered], None]
    track_offsets: bool
    report: Delivered = field(default_factory=Delivered)
    attempts: int = 0


class Emitter:
    """An idempotent producer with grouped, loop-side delivery callbacks and retries."""

    def __init__(
        self,
        client_config: dict[str, Any],
        *,
        client_id: str,
        max_queued: int,
        delivery_timeout_ms: int = 30_000,
        retries_before_stall: int = 5,
        producer_factory: Callable[[], ProducerLike] | None = None,
    ) -> None:
        config: dict[str, Any] = {
            **client_config,
            "client.id": client_id,
            "enable.idempotence": True,  # acks=all, and order kept through retries
            "linger.ms": 1,
            "partitioner": "murmur2_random",  # the Java client's key -> partition mapping
            "queue.buffering.max.messages": max(100_000, max_queued),
            "delivery.timeout.ms": delivery_timeout_ms,
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
        self.retries_before_stall = retries_before_stall
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._thread: threading.Thread | None = None
        self._retrying: set[int] = set()  # ids of groups waiting to be sent again
        self._held: deque[tuple[list[Outgoing], _Group]] = deque()  # newer sends, in order
        self.stalled: str | None = None  # why outputs are not getting through, if they are not
        self.on_stall: Callable[[str | None], None] = lambda reason: None
        self.on_retry: Callable[[int], None] = lambda count: None  # messages sent again

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._running = True
        self._thread = threading.Thread(target=self._poll, name="streamscore-emit", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while self._running:
            self._producer.poll(0.05)
            if self._retiring:  # let a replaced producer report what it still holds
                for old in list(self._retiring):
                    old.poll(0)
                    if not len(old):
                        self._retiring.remove(old)

    @property
    def retrying(self) -> bool:
        return bool(self._retrying)

    def send(
        self,
        messages: Sequence[Outgoing],
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
        group = _Group(on_delivered, track_offsets)
        if not messages:
            group.report.acked_at = time.time()
            self._loop.call_soon(on_delivered, group.report)
            return
        if self._retrying:  # keep order: nothing overtakes a message being retried
            self._held.append((list(messages), group))
            return
        self._produce(messages, group)

    def _produce(self, messages: Sequence[Outgoing], group: _Group) -> None:
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
        produce = self._producer.produce
        ack = attempt.ack
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
                    raise EmitError(f"cannot produce to {message.topic!r}: {exc}") from exc

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
            if id(group) in self._retrying:
                self._retrying.discard(id(group))
                self._maybe_release()
            report.acked_at = time.time()
            group.callback(report)
            return
        self._retrying.add(id(group))
        error = attempt.failed[0][1]
        if group.attempts > self.retries_before_stall:
            self._stall(f"cannot deliver to the broker after {group.attempts} attempts: {error}")
        else:
            self.on_stall(f"retrying delivery: {error}")
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (group.attempts - 1))
        log.warning(
            "%d of %d messages not acknowledged (%s); sending again in %.1fs",
            len(retry), attempt.size, error, delay,
        )  # fmt: skip
        assert self._loop is not None
        self.on_retry(len(retry))
        self._loop.call_later(delay, self._produce, retry, group)

    def _stall(self, reason: str) -> None:
        if self.stalled is None:
            log.error("%s; intake stays stopped until it gets through", reason)
        self.stalled = reason
        self.on_stall(reason)

    def _maybe_release(self) -> None:
        if self._retrying:
            return
        if self.stalled is not None:
            log.warning("deliveries get through again")
        self.stalled = None
        self.on_stall(None)
        while self._held and not self._retrying:
            messages, group = self._held.popleft()
            self._produce(messages, group)

    async def close(self, timeout: float = 30.0) -> int:
        """Flush what is queued and stop; return how many messages could not be delivered."""
        self._running = False
        loop = asyncio.get_running_loop()
        if self._thread is not None:
            await loop.run_in_executor(None, self._thread.join)
            self._thread = None
        remaining: int = await loop.run_in_executor(None, self._producer.flush, timeout)
        if remaining:
            log.error("%d messages were not delivered before shutdown", remaining)
        return remaining


def _log_client_error(error: KafkaError) -> None:
    """librdkafka's client-level errors (connection trouble, fatal producer states)."""
    if error.fatal():
        log.error("producer: fatal error %s", error)
    else:
        log.debug("producer: %s", error)
