"""Dead letters as messages: the consumed record byte for byte, plus the ``dlq.*`` headers.

Any record the input topics hold must get its dead letter, whatever its size,
or a worker that cannot produce it stops, restarts on the same record and
stops again. So the DLQ topic is made able to hold what the inputs hold
(:mod:`streams.kafka.topics`), the producer accepts records as large
(:func:`streams.kafka.emit.producer_size_config`), and only a dead letter that still
does not fit (a DLQ topic made smaller by hand, a broker that refuses it) is
cut: the value first, then the key, then the original headers, each cut said
in a header (``dlq.value.bytes`` and ``dlq.value.sha256`` for the value). A
cut dead letter is still one dead letter per record, and the worker goes on.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence

from faust.types import TP

from schemas import deadletter
from schemas.deadletter import dead_letter_headers
from streams.errors import EmitError
from streams.kafka.emit import SIZE_ERRORS, Delivered, Emitter, Outgoing
from streams.kafka.transactions import TransactionalEmitter
from streams.metrics import Metrics
from streams.scoring.decode import DeadLetter

log = logging.getLogger(__name__)

#: What a record costs beyond its key, value and headers in a record batch (Kafka's v2
#: format: batch header 61 bytes, record framing at most 21), with room to spare.
RECORD_OVERHEAD = 128
#: Framing of one header beyond its name and value (two varints and the count's share).
HEADER_OVERHEAD = 10
#: Below this a dead letter is not cut further: a broker refusing it refuses everything.
MIN_DEAD_LETTER_BYTES = 4096


def record_bytes(message: Outgoing) -> int:
    """The size a broker counts for ``message`` (an upper estimate)."""
    size = RECORD_OVERHEAD + len(message.key or b"") + len(message.value or b"")
    for name, value in message.headers or ():
        size += HEADER_OVERHEAD + len(name.encode()) + len(value or b"")
    return size


def fit(message: Outgoing, limit: int) -> Outgoing:
    """A dead letter (as :meth:`DeadLetterSink.message` makes it) cut to at most ``limit`` bytes.

    Unchanged when it fits. Otherwise the value is cut (its length and SHA-256
    in ``dlq.value.bytes``/``dlq.value.sha256``); if the key and headers alone
    are too large, the key is cut too (``dlq.key.bytes``/``dlq.key.sha256``),
    then the record's own headers are left out (``dlq.headers.dropped``: how many).
    The ``dlq.*`` headers that say why it is a dead letter (the last ones) always stay.
    """
    if record_bytes(message) <= limit:
        return message
    key, value = message.key or b"", message.value or b""
    headers = list(message.headers or ())
    split = len(headers) - len(deadletter.HEADER_NAMES)
    own, ours = headers[:split], headers[split:]
    notes: list[tuple[str, str | bytes | None]] = [
        (deadletter.VALUE_BYTES, str(len(value)).encode()),
        (deadletter.VALUE_SHA256, hashlib.sha256(value).hexdigest().encode()),
    ]

    def build(k: bytes, v: bytes, headers: list[tuple[str, str | bytes | None]]) -> Outgoing:
        kept_key = k if message.key is not None else None
        return Outgoing(message.topic, kept_key, v, headers, message.partition)

    def room(k: bytes, headers: list[tuple[str, str | bytes | None]]) -> int:
        return limit - record_bytes(build(k, b"", headers))

    if room(key, own + ours + notes) >= 0:
        return build(key, value[: room(key, own + ours + notes)], own + ours + notes)
    notes += [
        (deadletter.KEY_BYTES, str(len(key)).encode()),
        (deadletter.KEY_SHA256, hashlib.sha256(key).hexdigest().encode()),
    ]
    if room(b"", own + ours + notes) >= 0:
        return build(key[: room(b"", own + ours + notes)], b"", own + ours + notes)
    notes.append((deadletter.HEADERS_DROPPED, str(len(own)).encode()))
    return build(key[: max(0, room(b"", ours + notes))], b"", ours + notes)


class DeadLetterSink:
    """Turns :class:`DeadLetter` values into DLQ messages, sends them, and counts them.

    ``max_bytes`` is the largest record the DLQ topic takes (read from the broker at
    start). A dead letter the broker refuses as too large all the same is cut to half
    its size and sent again, until it lands or is too small to cut (then the worker
    stops taking input: the broker refuses everything).
    """

    def __init__(
        self,
        topic: str,
        app_id: str,
        metrics: Metrics,
        *,
        emitter: Emitter | TransactionalEmitter | None = None,
        max_bytes: int = 1_048_588,
        on_fatal: Callable[[BaseException], None] = lambda exc: None,
    ) -> None:
        self.topic = topic
        self.app_id = app_id
        self.max_bytes = max_bytes
        self._metrics = metrics
        self._emitter = emitter
        self._on_fatal = on_fatal

    def message(self, letter: DeadLetter) -> Outgoing:
        """The dead letter as consumed, with the ``dlq.*`` headers (not cut)."""
        record = letter.record
        headers = dead_letter_headers(
            record.headers,
            stage=letter.stage,
            error_class=letter.error_class,
            message=letter.message,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            app_id=self.app_id,
        )
        return Outgoing(self.topic, record.key, record.value, headers)

    def messages(self, dead: Sequence[DeadLetter]) -> list[Outgoing]:
        """The dead letters as messages, each cut to what the DLQ topic takes."""
        return [self._fitted(self.message(letter), self.max_bytes) for letter in dead]

    def _fitted(self, message: Outgoing, limit: int) -> Outgoing:
        cut = fit(message, limit)
        if cut is not message:
            self._metrics.dlq_cut.inc()
            log.warning(
                "a dead letter of %d bytes is cut to %d to fit %r",
                record_bytes(message), record_bytes(cut), self.topic,
            )  # fmt: skip
        return cut

    def send(
        self,
        dead: Sequence[DeadLetter],
        on_delivered: Callable[[], None],
        *,
        events: bool = True,
    ) -> None:
        """Produce ``dead``; once every one has landed, count them and call ``on_delivered``.

        ``events``: they were events (counted in ``streamscore_events_total{outcome="dlq"}``).
        """

        def landed() -> None:
            self.delivered(dead, events=events)
            on_delivered()

        self._send([(self.message(letter), self.max_bytes) for letter in dead], landed)

    def _send(self, pending: list[tuple[Outgoing, int]], landed: Callable[[], None]) -> None:
        """Send each dead letter cut to its limit; what is refused as too large, at half."""
        emitter = self._emitter
        if emitter is None:
            raise EmitError("the dead-letter sink has no emitter")
        originals = {_source_of(message): (message, limit) for message, limit in pending}
        messages = [self._fitted(message, limit) for message, limit in pending]

        def delivered(report: Delivered) -> None:
            if not report.failures:
                landed()
                return
            again = []
            for sent, error in report.failures:
                size = record_bytes(sent)
                if error.code() not in SIZE_ERRORS or size <= MIN_DEAD_LETTER_BYTES:
                    self._on_fatal(EmitError(f"dead letter not delivered: {error}"))
                    return
                original, _ = originals[_source_of(sent)]
                again.append((original, max(MIN_DEAD_LETTER_BYTES, size // 2)))
            log.warning("%d dead letters refused as too large: sending them cut", len(again))
            self._send(again, landed)

        sources = [_partition(_source_of(m)) for m in messages] if _per_source(emitter) else None
        emitter.send(messages, delivered, source=sources)

    def delivered(self, dead: Sequence[DeadLetter], *, events: bool = True) -> None:
        """Count dead letters once the broker has them (``events``: they were events)."""
        for letter in dead:
            self._metrics.dlq.labels(letter.stage).inc()
        if events and dead:
            self._metrics.events.labels("dlq").inc(len(dead))


def _per_source(emitter: Emitter | TransactionalEmitter) -> bool:
    """Whether sends name their source partition (transactions are per source partition)."""
    return isinstance(emitter, TransactionalEmitter)


def _source_of(message: Outgoing) -> tuple[str, int, int]:
    """Where a dead letter's record was consumed: its ``dlq.source.*`` headers, ours (the last).

    The record's own headers come first and may carry any bytes under any name.
    """
    wanted = (deadletter.SOURCE_TOPIC, deadletter.SOURCE_PARTITION, deadletter.SOURCE_OFFSET)
    found: dict[str, str | bytes | None] = {}
    for name, value in message.headers or ():
        if name in wanted:
            found[name] = value
    topic, partition, offset = (_text(found[name]) for name in wanted)
    return topic, int(partition), int(offset)


def _text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _partition(source: tuple[str, int, int]) -> TP:
    return TP(source[0], source[1])
