"""The last stage: produce scores, dead letters and state changes, and learn when they land.

One idempotent confluent-kafka producer (librdkafka keeps per-partition order
even across its own retries) is fed from the event loop; a small thread polls
it for delivery reports. Messages are sent in *groups* (a batch's scores, a
chunk's dead letters): when the last message of a group is acknowledged the
group's callback runs on the event loop, and only then are the source
offsets finished, so nothing is committed before its output is durable.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException, Producer

from streams.errors import BrokerError, EmitError

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]] | None


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
    """What a group's callback learns: failures (if any) and the highest offsets written."""

    failures: list[tuple[Outgoing, KafkaError]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    acked_at: float = 0.0  # wall clock, when the last message was acknowledged


class _Group:
    """Counts one group's delivery reports on the polling thread."""

    __slots__ = ("_callback", "_loop", "_remaining", "_report", "_track_offsets")

    def __init__(
        self,
        size: int,
        callback: Callable[[Delivered], None],
        loop: asyncio.AbstractEventLoop,
        track_offsets: bool,
    ) -> None:
        self._remaining = size
        self._callback = callback
        self._loop = loop
        self._track_offsets = track_offsets
        self._report = Delivered()

    def ack(self, error: KafkaError | None, message: Any) -> None:
        """librdkafka's delivery report for one message of the group (polling thread)."""
        report = self._report
        if error is not None:
            failed = Outgoing(
                message.topic(), message.key(), message.value(), message.headers(),
                message.partition(),
            )  # fmt: skip
            report.failures.append((failed, error))
        elif self._track_offsets:
            key = (message.topic(), message.partition())
            offset = message.offset()
            if offset > report.offsets.get(key, -1):
                report.offsets[key] = offset
        self._remaining -= 1  # only the polling thread runs this
        if self._remaining == 0:
            report.acked_at = time.time()
            self._loop.call_soon_threadsafe(self._callback, report)


class Emitter:
    """An idempotent producer with grouped, loop-side delivery callbacks."""

    def __init__(self, client_config: dict[str, Any], *, client_id: str, max_queued: int) -> None:
        config = {
            **client_config,
            "client.id": client_id,
            "enable.idempotence": True,  # acks=all, and order kept through retries
            "linger.ms": 1,
            "partitioner": "murmur2_random",  # the Java client's key -> partition mapping
            "queue.buffering.max.messages": max(100_000, max_queued),
            "delivery.timeout.ms": 120_000,
        }
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise BrokerError(f"cannot create a Kafka producer: {exc}") from exc
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._running = True
        self._thread = threading.Thread(target=self._poll, name="streamscore-emit", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while self._running:
            self._producer.poll(0.05)

    def send(
        self,
        messages: Sequence[Outgoing],
        on_delivered: Callable[[Delivered], None],
        *,
        track_offsets: bool = False,
    ) -> None:
        """Produce ``messages`` in order; call ``on_delivered`` on the loop once all landed."""
        if self._loop is None:
            raise EmitError("the emitter is not started")
        if not messages:
            report = Delivered(acked_at=time.time())
            self._loop.call_soon(on_delivered, report)
            return
        group = _Group(len(messages), on_delivered, self._loop, track_offsets)
        produce = self._producer.produce
        ack = group.ack
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

    async def close(self, timeout: float = 30.0) -> int:
        """Flush what is queued and stop; return how many messages could not be delivered."""
        self._running = False
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None
        remaining: int = await asyncio.get_running_loop().run_in_executor(
            None, self._producer.flush, timeout
        )
        if remaining:
            log.error("%d messages were not delivered before shutdown", remaining)
        return remaining
