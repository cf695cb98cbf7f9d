"""Records the Kafka client cannot even decode: dead letters instead of a crash loop.

Kafka requires header names to be UTF-8. A record whose header name is not
makes aiokafka (Faust's client) raise while unpacking its batch, every time
it is fetched: a poison pill that would stop the worker and stop it again
after every restart. The bulk consumer finds such a record, reads its key,
value and timestamp with a client that can (confluent-kafka), and hands it
to the pipeline as an :class:`UndecodableRecord`, which the decode stage
dead-letters. Its headers cannot be represented, so the dead letter carries
none and says so.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from streams.errors import BrokerError


@dataclass(frozen=True, slots=True)
class UndecodableRecord:
    """A consumed record the client could not decode (the Record protocol of decode.py)."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    reason: str
    headers: Sequence[tuple[str, bytes]] = field(default_factory=list)


def read_raw(
    client_config: Mapping[str, Any], topic: str, partition: int, offset: int, reason: str
) -> UndecodableRecord:
    """Key, value and timestamp of one record, read without decoding its headers."""
    consumer = Consumer(
        {**client_config, "group.id": "streamscore-raw-reader", "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            if message.offset() != offset:
                break
            kind, stamp = message.timestamp()
            return UndecodableRecord(
                topic, partition, offset, stamp if kind else None, message.key(),
                message.value(), f"{reason}; the record's headers are left out",
            )  # fmt: skip
    finally:
        consumer.close()
    raise BrokerError(f"cannot read {topic}[{partition}]@{offset} to dead-letter it")
