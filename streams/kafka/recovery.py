"""Where table recovery must read up to: the offset after the last record it can receive.

Faust restores a table by reading its changelog until it has consumed the
record just before the partition's reported end offset. Two situations make
that record unreachable, and recovery then waits forever or stops short:

- the embedded broker reports the base offset of the last record *batch*
  plus one, which is too low when that batch holds several records
  (recovery stops short and the table loses its tail);
- with exactly-once processing, the changelog ends with transaction markers
  and possibly aborted records, which a read_committed consumer never
  receives (recovery would wait for them forever).

So the end is measured by reading: from just before the reported end
forward to the end a consumer sees, and, if nothing arrives there, from
further back, keeping the offset of the last record actually delivered. On
Apache Kafka without transactions this reads one record per partition and
confirms the reported end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

log = logging.getLogger(__name__)

Key = tuple[str, int]

#: How far back to look when the tail holds no deliverable record (then everything).
WINDOWS = (1, 1_000, 100_000)


def recovery_end_offsets(
    client_config: Mapping[str, Any],
    reported: Mapping[Key, int],
    *,
    read_committed: bool,
    timeout: float = 10.0,
) -> dict[Key, int]:
    """Per partition: one past the last record a reader of this isolation level receives."""
    ends = {key: 0 for key, end in reported.items() if end <= 0}
    todo = {key: end for key, end in reported.items() if end > 0}
    consumer = Consumer(
        {
            **client_config,
            "group.id": "streamscore-recovery-probe",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        }
    )
    try:
        for window in (*WINDOWS, None):
            if not todo:
                break
            starts = {k: 0 if window is None else max(0, end - window) for k, end in todo.items()}
            found = _last_delivered(consumer, starts, timeout)
            for key in list(todo):
                if key in found:
                    ends[key] = found[key] + 1
                    del todo[key]
                elif window is None or starts[key] == 0:  # read it all: nothing deliverable
                    ends[key] = 0
                    del todo[key]
    finally:
        consumer.close()
    for key, end in ends.items():
        if end != reported.get(key, end):
            log.info("end of %s[%d] for recovery: %d (reported %d)", *key, end, reported[key])
    return ends


def _last_delivered(
    consumer: Consumer, starts: Mapping[Key, int], timeout: float
) -> dict[Key, int]:
    """Read each partition from its start to its end; return the last offset delivered."""
    consumer.assign(
        [TopicPartition(topic, part, offset) for (topic, part), offset in starts.items()]
    )
    last: dict[Key, int] = {}
    open_partitions = set(starts)
    deadline = time.monotonic() + timeout
    while open_partitions and time.monotonic() < deadline:
        for message in consumer.consume(10_000, 0.2):
            key = (str(message.topic()), int(message.partition() or 0))
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(key)
                continue
            last[key] = max(last.get(key, -1), int(message.offset() or 0))
    if open_partitions:
        log.warning("reading %d changelog tails timed out", len(open_partitions))
    consumer.unassign()
    return last
