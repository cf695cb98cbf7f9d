"""Configuration (d): Quix Streams consuming the events and producing each one, as the peer.

Run as a script with the Python of its own virtualenv (``make bench`` builds
``.venv/quix-peer``: quixstreams pins confluent-kafka and pydantic below the
versions streamscore uses, so the two cannot share one environment)::

    .venv/quix-peer/bin/python benchmarks/quix_peer.py --broker HOST:PORT \\
        --input events --output scores --group quix-peer --state-dir /tmp/quix

Bytes in, bytes out (no JSON round trip): the cheapest pipeline Quix runs,
with its default at-least-once checkpointing (commit every 5 s, after the
producer is flushed). The one transformation sets the output record's
timestamp to the time of processing: Quix otherwise copies the input's
timestamp onto the output, which would make every latency zero.

It imports nothing from streamscore, so it runs where only quixstreams is installed.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Sequence
from typing import Any


def _now_ms(value: Any, key: Any, timestamp: int, headers: Any) -> int:
    return time.time_ns() // 1_000_000


def peer_arguments(description: str) -> argparse.ArgumentParser:
    """The options every peer script takes (the bare client's too)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--broker", required=True, help="bootstrap HOST:PORT")
    parser.add_argument("--input", required=True, help="topic to consume")
    parser.add_argument("--output", required=True, help="topic to produce to")
    parser.add_argument("--group", required=True, help="consumer group")
    parser.add_argument(
        "--fetch-wait-ms", type=int, default=10,
        help="fetch.wait.max.ms (the embedded broker answers a waiting fetch only when it expires)",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = peer_arguments(__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True, help="Quix state directory")
    args = parser.parse_args(argv)
    # Imported by name: quixstreams lives in its own virtualenv, not in streamscore's
    # (where this module is only type-checked).
    quix: Any = importlib.import_module("quixstreams")
    app = quix.Application(
        broker_address=args.broker,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel="WARNING",
        # The same group timeouts as streamscore (librdkafka's defaults make joins
        # slow on the embedded broker), and the same short fetch wait.
        consumer_extra_config={
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            "max.poll.interval.ms": 20_000,
            "fetch.wait.max.ms": args.fetch_wait_ms,
        },
    )
    source = app.topic(args.input, key_deserializer="bytes", value_deserializer="bytes")
    sink = app.topic(args.output, key_serializer="bytes", value_serializer="bytes")
    frame = app.dataframe(source).set_timestamp(_now_ms)
    frame.to_topic(sink)
    app.run()


if __name__ == "__main__":
    main()
