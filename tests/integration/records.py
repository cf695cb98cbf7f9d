"""Reading a whole topic back, for tests of the operator commands."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

COMMAND = [sys.executable, "-m", "streams"]


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    """Create topics as the worker would, before a producer's first record auto-creates them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).values():
        future.result(timeout=15)


def read_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 30) -> list[Message]:
    """Every record of ``topic`` now, in partition then offset order."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
         "enable.partition.eof": True, "enable.auto.commit": False, "fetch.wait.max.ms": 10}
    )  # fmt: skip
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: list[Message] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(at_end) < partitions and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.2):
            error = message.error()
            if error is None:
                records.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                at_end.add(int(message.partition() or 0))
            else:
                raise AssertionError(str(error))
    consumer.close()
    assert len(at_end) == partitions, f"{topic}: no end of partition within {timeout}s"
    return sorted(records, key=lambda m: (m.partition() or 0, m.offset() or 0))


def streamscore(
    env: Mapping[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a ``streamscore`` command as an operator would, with this environment."""
    return subprocess.run(
        [*COMMAND, *args], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
