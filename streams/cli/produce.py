"""``streamscore produce``: a pipeline's synthetic traffic for a running deployment.

The demo brings its own broker and worker; this command only publishes, to
whatever ``STREAMSCORE_BROKER`` points at (the compose file's demo producer,
a staging cluster), so dashboards and alerts can be seen moving. Profiles go
to the features topic first, then events at the requested rate, optionally
with a share of malformed ones that the worker must dead-letter. The traffic is
the pipeline's own (its declared ``traffic``; ``fraud``'s synthetic world).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import click
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.cli.common import EXIT_USAGE, fail, settings_or_exit
from streams.kafka.topics import AuthFailures
from streams.pipeline import Traffic
from streams.settings import Settings

#: Events are generated in rounds of this many (the traffic's ``events`` continues).
ROUND = 1_000


class _Delivery:
    """Counts what the broker acknowledged and remembers the first failure."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.first_error: str | None = None

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.delivered += 1
            return
        self.failed += 1
        if self.first_error is None:
            self.first_error = f"{error.str()} (topic {message.topic()})"


@click.command()
@click.option(
    "--events", "n_events", default=10_000, show_default=True,
    help="Events to publish (0: until SIGINT/SIGTERM).",
)  # fmt: skip
@click.option("--rate", default=500.0, show_default=True, help="Events per second (0: unpaced).")
@click.option("--entities", default=1_000, show_default=True, help="Distinct entity ids (keys).")
@click.option("--seed", default=11, show_default=True, help="Seed of the synthetic traffic.")
@click.option(
    "--malformed", default=0.0, show_default=True,
    help="Share of extra malformed events (0 to 1), to exercise the DLQ.",
)  # fmt: skip
@click.option(
    "--profiles/--no-profiles", default=True, show_default=True,
    help="Publish the entities' feature profiles before the events.",
)  # fmt: skip
@click.option(
    "--pipeline", "pipeline_ref", default=None, metavar="P",
    help="A packaged pipeline or MODULE:ATTRIBUTE (default: STREAMSCORE_PIPELINE).",
)  # fmt: skip
def produce(
    n_events: int,
    rate: float,
    entities: int,
    seed: int,
    malformed: float,
    profiles: bool,
    pipeline_ref: str | None,
) -> None:
    """Publish a pipeline's synthetic events (and profiles) to the configured topics."""
    from streams.cli.pipeline import pipeline_or_exit

    if n_events < 0 or rate < 0 or entities < 1 or not 0.0 <= malformed <= 1.0:
        fail(
            "--events and --rate must not be negative, --entities positive, "
            "--malformed between 0 and 1",
            EXIT_USAGE,
        )
    settings = settings_or_exit()
    declared = pipeline_or_exit(pipeline_ref)
    if declared.traffic is None:
        fail(
            f"pipeline {declared.name!r} declares no synthetic traffic; replay a file of its "
            "events with `streamscore demo --input FILE`",
            EXIT_USAGE,
        )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    world = declared.traffic(entities, seed)
    auth = AuthFailures()
    producer = Producer({**_producer_config(settings), "error_cb": auth})
    delivery = _Delivery()
    try:  # reach the cluster first: a wrong broker or password is one clear line, not a hang
        producer.list_topics(timeout=15)
    except KafkaException as exc:
        fail(str(auth.unreachable(producer, settings, exc)))
    try:
        n_profiles = _publish_profiles(producer, settings, world, delivery) if profiles else 0
        sent, bad = _publish_events(
            producer, settings, world, delivery, n_events, rate, malformed, seed, stop
        )
    except KafkaException as exc:
        fail(f"cannot publish to Kafka at {settings.bootstrap_servers}: {exc.args[0]}")
    finally:
        remaining = producer.flush(30)
    if delivery.failed or remaining:
        reason = delivery.first_error or f"{remaining} records still queued after 30 s"
        fail(f"{delivery.failed + remaining} records were not delivered: {reason}")
    click.echo(
        f"published {sent} events ({bad} malformed) to {settings.events_topic} and "
        f"{n_profiles} profiles to {settings.features_topic}"
    )


def _producer_config(settings: Settings) -> dict[str, Any]:
    return {
        **settings.kafka_client_config(),
        "client.id": f"{settings.app_id}-produce",
        "linger.ms": 5,
        "enable.idempotence": True,
        # Java clients' partitioner, so keys land where other Kafka producers put them.
        "partitioner": "murmur2_random",
    }


def _publish_profiles(
    producer: Producer, settings: Settings, world: Traffic, delivery: _Delivery
) -> int:
    count = 0
    for key, value in world.profiles():
        _produce(producer, settings.features_topic, key, value, delivery)
        count += 1
    producer.flush(30)
    return count


def _records(
    world: Traffic, n_events: int, malformed: float, seed: int
) -> Iterator[tuple[bytes, bytes, bool]]:
    """(key, value, is_malformed) forever or for ``n_events`` valid events."""
    produced = 0
    debt = 0.0
    bad_rounds = 0
    while n_events == 0 or produced < n_events:
        size = ROUND if n_events == 0 else min(ROUND, n_events - produced)
        for key, value in world.events(size):
            yield key, value, False
            debt += malformed
            if debt >= 1.0:
                debt -= 1.0
                bad_rounds += 1
                (bad,) = world.malformed(1, seed * 1_000_003 + bad_rounds)
                yield key, bad, True
        produced += size


def _publish_events(
    producer: Producer,
    settings: Settings,
    world: Traffic,
    delivery: _Delivery,
    n_events: int,
    rate: float,
    malformed: float,
    seed: int,
    stop: threading.Event,
) -> tuple[int, int]:
    started = time.monotonic()
    sent = bad = 0
    for key, value, is_bad in _records(world, n_events, malformed, seed):
        if stop.is_set():
            break
        if rate and not is_bad:
            ahead = started + sent / rate - time.monotonic()
            if ahead > 0 and stop.wait(ahead):
                break
        _produce(producer, settings.events_topic, key, value, delivery)
        if is_bad:
            bad += 1
        else:
            sent += 1
    return sent, bad


def _produce(producer: Producer, topic: str, key: bytes, value: bytes, delivery: _Delivery) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, on_delivery=delivery)
            break
        except BufferError:  # the local queue is full: let deliveries drain it
            producer.poll(0.1)
    producer.poll(0)
