"""Dead letters as messages: the consumed record byte for byte, plus the ``dlq.*`` headers."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.deadletter import dead_letter_headers
from streams.decode import DeadLetter
from streams.emit import Outgoing
from streams.metrics import Metrics


class DeadLetterSink:
    """Turns :class:`DeadLetter` values into messages for the DLQ topic, and counts them."""

    def __init__(self, topic: str, app_id: str, metrics: Metrics) -> None:
        self.topic = topic
        self.app_id = app_id
        self._metrics = metrics

    def messages(self, dead: Sequence[DeadLetter]) -> list[Outgoing]:
        out = []
        for letter in dead:
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
            out.append(Outgoing(self.topic, record.key, record.value, headers))
        return out

    def delivered(self, dead: Sequence[DeadLetter], *, events: bool = True) -> None:
        """Count dead letters once the broker has them (``events``: they were events)."""
        for letter in dead:
            self._metrics.dlq.labels(letter.stage).inc()
        if events and dead:
            self._metrics.events.labels("dlq").inc(len(dead))
