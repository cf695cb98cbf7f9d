"""The control topic: where the rollout plan lives, read and written with confluent-kafka.

The topic has one partition and ``cleanup.policy=compact``: the plan is one
key (``plan``) whose last value wins, so compaction keeps the current plan
forever and a reader only has to read the partition to its end. One partition
keeps every write in one order.

Reading to the end does not trust the reported end offset alone (the embedded
broker can report it short, see "The embedded broker" in the README): the
reader waits for the end-of-partition event *and* for one further poll that
brings nothing.

The topic is never created by accident: a metadata request for a missing topic
makes some brokers (the embedded one included) create it with default
settings, uncompacted. So readers look the topic up in the full topic list,
and only :func:`ensure_control_topic` creates it.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
)

from schemas.rollout import PLAN_KEY, RolloutPlan
from streams.errors import BrokerError, TopicMismatchError
from streams.kafka.topics import AuthFailures
from streams.settings import Settings

__all__ = [
    "COMPACT", "control_consumer", "ensure_control_topic", "read_plan", "read_plan_and_end",
    "write_plan",
]  # fmt: skip

log = logging.getLogger(__name__)

#: The control topic's cleanup policy: the latest value of each key is kept for ever.
COMPACT = "compact"


def ensure_control_topic(settings: Settings, timeout: float = 15.0) -> bool:
    """Create the control topic (1 partition, compacted) if missing; True when it was created.

    An existing topic with several partitions is refused; one that is not
    compacted is only warned about (the plan still works, until retention
    deletes it).
    """
    auth = AuthFailures()
    config: dict[str, Any] = {
        **settings.kafka_client_config(),
        "client.id": f"{settings.app_id}-control-admin",
        "error_cb": auth,
    }
    admin = AdminClient(config)
    topic = settings.control_topic
    existing = _partition_count(admin, auth, settings, timeout)
    if existing is None:
        futures = admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=1,
                    replication_factor=settings.replication_factor,
                    config={"cleanup.policy": COMPACT},
                )
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        try:
            futures[topic].result()
        except KafkaException as exc:
            error = exc.args[0]
            if not (
                isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS
            ):
                raise BrokerError(f"cannot create the control topic {topic!r}: {error}") from exc
        else:
            log.info("created the control topic %s (1 partition, compacted)", topic)
            return True
        existing = _partition_count(admin, auth, settings, timeout)
    if existing != 1:
        raise TopicMismatchError(
            f"the control topic {topic!r} has {existing} partitions; the rollout plan needs "
            "exactly 1 (compacted): set STREAMSCORE_CONTROL_TOPIC to a new name or recreate it"
        )
    _warn_unless_compacted(admin, topic, timeout)
    return False


def read_plan(settings: Settings, timeout: float = 30.0) -> RolloutPlan | None:
    """The latest plan on the control topic, or None when none was written (or it is missing).

    Raises :class:`~schemas.rollout.PlanError` when the latest value is not a
    plan, and :class:`BrokerError` when the topic cannot be read to its end in
    ``timeout`` seconds.
    """
    value, _ = read_plan_and_end(settings, timeout)
    return None if value is None else RolloutPlan.from_bytes(value)


def read_plan_and_end(settings: Settings, timeout: float = 30.0) -> tuple[bytes | None, int]:
    """The latest plan record's value (unparsed) and the offset after the last record read.

    A worker follows the topic from that offset, so it never replays older plans.
    """
    deadline = time.monotonic() + timeout
    auth = AuthFailures()
    consumer = control_consumer(settings, "control-reader", error_cb=auth)
    topic = settings.control_topic
    try:
        partitions = _partitions(consumer, auth, settings, min(timeout, 15.0))
        if not partitions:
            return None, 0
        return _latest(consumer, topic, partitions, deadline, settings.fetch_max_wait_ms)
    except KafkaException as exc:
        raise BrokerError(f"cannot read the control topic {topic!r}: {exc.args[0]}") from exc
    finally:
        consumer.close()


def control_consumer(settings: Settings, purpose: str, **overrides: Any) -> Consumer:
    """A group-less reader of the control topic (a fresh group id, never committing)."""
    return Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"{settings.app_id}-{purpose}-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": settings.fetch_max_wait_ms or 100,
            **overrides,
        }
    )


def write_plan(settings: Settings, plan: RolloutPlan, timeout: float = 30.0) -> None:
    """Publish ``plan`` (creating the control topic first if needed); raise unless acknowledged."""
    ensure_control_topic(settings, timeout=min(timeout, 15.0))
    producer = Producer(
        {
            **settings.kafka_client_config(),
            "client.id": f"{settings.app_id}-control-writer",
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": int(timeout * 1000),
        }
    )
    outcome: list[KafkaError | None] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        outcome.append(error)

    topic = settings.control_topic
    try:
        producer.produce(topic, key=PLAN_KEY, value=plan.to_bytes(), on_delivery=delivered)
    except (KafkaException, BufferError) as exc:
        raise BrokerError(f"cannot write the plan to {topic!r}: {exc}") from exc
    remaining = producer.flush(timeout + 5.0)
    if remaining or not outcome:
        raise BrokerError(
            f"the plan was not acknowledged by Kafka at {settings.bootstrap_servers} within "
            f"{timeout:.0f} s; it may or may not have been written: check `streamscore rollout "
            "status` before trying again"
        )
    if outcome[0] is not None:
        raise BrokerError(f"Kafka refused the plan on {topic!r}: {outcome[0].str()}")


def _partition_count(
    admin: AdminClient, auth: AuthFailures, settings: Settings, timeout: float
) -> int | None:
    """Partitions of the control topic, None when it does not exist (lists all topics)."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise auth.unreachable(admin, settings, exc) from exc
    found = metadata.topics.get(settings.control_topic)
    return None if found is None else len(found.partitions)


def _partitions(
    consumer: Consumer, auth: AuthFailures, settings: Settings, timeout: float
) -> list[int]:
    """The control topic's partitions (none when it does not exist), without creating it."""
    try:
        metadata = consumer.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise auth.unreachable(consumer, settings, exc) from exc
    found = metadata.topics.get(settings.control_topic)
    if found is None or found.error is not None:
        return []
    return sorted(found.partitions)


def _latest(
    consumer: Consumer,
    topic: str,
    partitions: list[int],
    deadline: float,
    fetch_wait_ms: int | None,
) -> tuple[bytes | None, int]:
    """The last value of the plan key, and the offset after the last record (one partition)."""
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    # After every partition reported its end, one more poll must bring nothing:
    # a short reported end would otherwise hide the newest plan.
    settle = 0.2 + 2 * (fetch_wait_ms or 100) / 1000
    at_end: set[int] = set()
    latest: bytes | None = None
    end = 0
    while True:
        if time.monotonic() > deadline:
            raise BrokerError(
                f"could not read the control topic {topic!r} to its end in time "
                f"(partitions {sorted(set(partitions) - at_end)} still open)"
            )
        done = at_end.issuperset(partitions)
        messages = consumer.consume(1000, settle if done else 0.2)
        if done and not any(m.error() is None for m in messages):
            return latest, end
        for message in messages:
            error = message.error()
            partition = int(message.partition() or 0)
            if error is None:
                at_end.discard(partition)
                end = max(end, int(message.offset() or 0) + 1)
                if message.key() == PLAN_KEY:
                    latest = message.value()  # None: a tombstone, the plan was deleted
            elif error.code() == KafkaError._PARTITION_EOF:
                at_end.add(partition)
            else:
                raise BrokerError(f"reading the control topic {topic!r} failed: {error.str()}")


def _warn_unless_compacted(admin: AdminClient, topic: str, timeout: float) -> None:
    """Log when an existing control topic is not compacted (best effort: ACLs may deny it)."""
    try:
        futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
        configs: dict[str, Any] = next(iter(futures.values())).result(timeout=timeout)
    except (KafkaException, TimeoutError, StopIteration) as exc:
        log.debug("cannot describe the control topic %s: %s", topic, exc)
        return
    entry = configs.get("cleanup.policy")
    policy = "" if entry is None else str(entry.value)
    if COMPACT not in policy.split(","):
        log.warning(
            "the control topic %s has cleanup.policy=%s, not compact: retention can delete "
            "the rollout plan; set cleanup.policy=compact on it",
            topic,
            policy or "unknown",
        )
