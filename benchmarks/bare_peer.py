"""Configuration (e): a bare confluent-kafka loop, consume -> produce, no framework.

    python -m benchmarks.bare_peer --broker HOST:PORT --input events \\
        --output scores --group bare-peer

The floor of any Python design on this machine and broker: what a
hand-written librdkafka loop costs (no decoding, no model, no state), and
how long the broker's own hop takes. It commits as confluent-kafka's
at-least-once examples do: the consumed positions, every second, after the
producer has delivered everything produced before them. Each output record
is stamped with the time it was produced (its input's timestamp would make
every latency zero). SIGTERM stops the loop, flushes, commits and closes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from benchmarks.quix_peer import peer_arguments

COMMIT_INTERVAL_S = 1.0


def run(
    consumer: Any, producer: Any, output: str, should_stop: Any, commit_interval_s: float
) -> int:
    """Consume and produce until ``should_stop()``; return how many records were passed on."""
    passed = 0
    pending = False  # consumed since the last commit
    next_commit = time.monotonic() + commit_interval_s
    try:
        while not should_stop():
            for message in consumer.consume(1000, 0.1):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(error)
                while True:
                    try:
                        producer.produce(
                            output, message.value(), message.key(),
                            timestamp=time.time_ns() // 1_000_000,
                        )  # fmt: skip
                        break
                    except BufferError:  # the local queue is full: let deliveries drain it
                        producer.poll(0.01)
                passed += 1
                pending = True
            producer.poll(0)
            if pending and time.monotonic() >= next_commit:
                _commit(consumer, producer)
                pending = False
                next_commit = time.monotonic() + commit_interval_s
    finally:
        if pending:
            _commit(consumer, producer)
    return passed


def _commit(consumer: Any, producer: Any) -> None:
    """Commit what was consumed once everything produced from it is acknowledged."""
    if producer.flush(30):
        raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, "outputs not delivered"))
    consumer.commit(asynchronous=False)


def main(argv: Sequence[str] | None = None) -> None:
    args = peer_arguments(__doc__.splitlines()[0]).parse_args(argv)
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, frame: stopping.append(received))
    consumer = Consumer(
        {
            "bootstrap.servers": args.broker,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # The same group timeouts and fetch wait as the other configurations.
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            "max.poll.interval.ms": 20_000,
            "fetch.wait.max.ms": args.fetch_wait_ms,
        }
    )
    producer = Producer({"bootstrap.servers": args.broker, "partitioner": "murmur2_random"})
    consumer.subscribe([args.input])
    try:
        run(consumer, producer, args.output, lambda: bool(stopping), COMMIT_INTERVAL_S)
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
