"""How fast the embedded broker answers fetches on a partition of many small record batches.

    python -m benchmarks.fetch_probe --batches 25000 --wait-ms 10

Writes ``--batches`` one-record batches to a one-partition topic of a fresh
embedded broker, then reads them back with the given fetch wait from the end
(the last 10 records), the middle and the start, and prints what each read got
within ``--timeout`` seconds. ``docs/benchmarks.md`` ("The embedded broker's
fetches") shows why this matters to the latency figures.
"""

from __future__ import annotations

import argparse
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streams.kafka.embedded import running_broker

TOPIC = "fetch-probe"


def write_one_record_batches(bootstrap: str, topic: str, batches: int) -> None:
    """Create a one-partition ``topic`` and write ``{"event_id":"e<i>"}`` in one batch each."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "batch.num.messages": 1})
    for i in range(batches):
        while True:
            try:
                producer.produce(topic, b'{"event_id":"e%d"}' % i)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)


def _read(bootstrap: str, start: int, end: int, wait_ms: int, timeout: float) -> tuple[int, float]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "fetch-probe",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": wait_ms,
        }
    )
    consumer.assign([TopicPartition(TOPIC, 0, start)])
    began = time.monotonic()
    got = 0
    try:
        while got < end - start and time.monotonic() - began < timeout:
            got += sum(1 for m in consumer.consume(10_000, 0.05) if m.error() is None)
    finally:
        consumer.close()
    return got, time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=25_000)
    parser.add_argument("--wait-ms", type=int, default=10, help="fetch.wait.max.ms of the reader")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds each read may take")
    args = parser.parse_args()
    with running_broker() as broker:
        write_one_record_batches(broker.bootstrap, TOPIC, args.batches)
        n = args.batches
        for label, start in (("end", max(0, n - 10)), ("middle", n // 2), ("start", 0)):
            got, seconds = _read(broker.bootstrap, start, n, args.wait_ms, args.timeout)
            print(
                f"{n} one-record batches, fetch wait {args.wait_ms} ms, from the {label}: "
                f"read {got} of {n - start} in {seconds:.2f} s"
            )


if __name__ == "__main__":
    main()
