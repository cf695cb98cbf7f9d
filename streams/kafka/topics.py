"""Before a worker starts: reach the cluster, create missing topics, check co-partitioning.

The tables are partitioned like the events topic (an entity's events and its
state live in the same partition number), so the events and features topics,
and any existing table changelog, must have ``STREAMSCORE_PARTITIONS``
partitions. A mismatch is a clear error, not a silent mis-join.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from streams.errors import BrokerError, TopicMismatchError
from streams.settings import Settings

log = logging.getLogger(__name__)

#: The tables the app keeps; their changelogs are ``<app id>-<table>-changelog``.
TABLES: tuple[str, ...] = ("profiles", "history")

#: The embedded broker's cluster id (the ``streamscore broker`` command sets it).
EMBEDDED_CLUSTER_IDS = frozenset({"streamscore-embedded", "tansu_cluster"})


#: Apache Kafka's default ``message.max.bytes`` (broker) and ``max.message.bytes`` (topic),
#: assumed where the broker does not tell (the embedded broker tells nothing).
KAFKA_DEFAULT_MESSAGE_BYTES = 1_048_588
#: What a dead letter adds to its record: the ``dlq.*`` headers (the reason is at most
#: 1 KiB), with room to spare. The DLQ topic is made this much larger than the inputs.
DEAD_LETTER_HEADROOM = 16 * 1024


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """The largest records, in bytes, as the broker says (or Kafka's default where it does not).

    ``inputs``: what the events or features topic may hold, so what a dead letter must
    carry. ``dead_letters``: what the DLQ topic takes; a dead letter larger than that is
    cut (:mod:`streams.scoring.deadletters`). The producer is made to accept ``dead_letters``.
    """

    inputs: int = KAFKA_DEFAULT_MESSAGE_BYTES
    dead_letters: int = KAFKA_DEFAULT_MESSAGE_BYTES + DEAD_LETTER_HEADROOM


@dataclass(frozen=True, slots=True)
class Cluster:
    cluster_id: str | None
    created: tuple[str, ...]
    limits: RecordLimits = RecordLimits()

    @property
    def embedded(self) -> bool:
        """True on the embedded development broker (see ``streams.kafka.embedded``)."""
        return self.cluster_id in EMBEDDED_CLUSTER_IDS


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"


class AuthFailures:
    """A librdkafka ``error_cb`` that keeps authentication failures.

    A rejected SASL login surfaces from a metadata request only as "broker
    transport failure"; the reason arrives on the error callback, served by
    the client's ``poll``.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, error: KafkaError) -> None:
        if error.code() == KafkaError._AUTHENTICATION:
            self.messages.append(str(error.str()))

    def unreachable(self, client: Any, settings: Settings, exc: KafkaException) -> BrokerError:
        """The error to raise when ``client`` could not get metadata."""
        client.poll(0)  # serve the error callbacks queued meanwhile
        if self.messages:
            return BrokerError(
                f"Kafka at {settings.bootstrap_servers} rejected the credentials "
                f"({self.messages[0]}); check STREAMSCORE_KAFKA_SECURITY_PROTOCOL, "
                "STREAMSCORE_KAFKA_SASL_MECHANISM, STREAMSCORE_KAFKA_SASL_USERNAME and "
                "STREAMSCORE_KAFKA_SASL_PASSWORD"
            )
        return BrokerError(
            f"cannot reach Kafka at {settings.bootstrap_servers} ({exc.args[0]}); "
            "check STREAMSCORE_BROKER and that the cluster is up"
        )


def prepare_topics(settings: Settings, timeout: float = 15.0) -> Cluster:
    """Create the contract's topics where missing; raise if existing ones do not fit."""
    auth = AuthFailures()
    config: dict[str, Any] = {
        **settings.kafka_client_config(),
        "client.id": f"{settings.app_id}-admin",
        "error_cb": auth,
    }
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise auth.unreachable(admin, settings, exc) from exc
    existing = {name: len(topic.partitions) for name, topic in metadata.topics.items()}

    co_partitioned = [settings.events_topic, settings.features_topic]
    co_partitioned += [changelog_topic(settings, table) for table in TABLES]
    for name in co_partitioned:
        count = existing.get(name)
        if count is not None and count != settings.partitions:
            raise TopicMismatchError(
                f"topic {name!r} has {count} partitions but STREAMSCORE_PARTITIONS is "
                f"{settings.partitions}; the tables must be partitioned like the events: "
                f"set STREAMSCORE_PARTITIONS={count}"
            )

    wanted = [
        settings.events_topic,
        settings.features_topic,
        settings.scores_topic,
        settings.dlq_topic,
        settings.shadow_topic,
    ]
    missing = [name for name in dict.fromkeys(wanted) if name not in existing]
    broker_limit = _broker_message_bytes(admin, metadata, timeout)
    inputs = [settings.events_topic, settings.features_topic]
    told = _topic_message_bytes(admin, [t for t in inputs if t in existing], timeout)
    input_limit = max([told.get(t) or broker_limit or KAFKA_DEFAULT_MESSAGE_BYTES for t in inputs])
    dlq_wanted = input_limit + DEAD_LETTER_HEADROOM

    def new_topic(name: str) -> NewTopic:
        config = {"max.message.bytes": str(dlq_wanted)} if name == settings.dlq_topic else {}
        return NewTopic(name, settings.partitions, settings.replication_factor, config=config)

    if missing:
        futures = admin.create_topics(
            [new_topic(name) for name in missing],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                error = exc.args[0]
                if (
                    isinstance(error, KafkaError)
                    and error.code() == KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    continue
                raise BrokerError(f"cannot create topic {name!r}: {error}") from exc
        log.info("created topics %s", ", ".join(missing))
    dlq_told = _topic_message_bytes(admin, [settings.dlq_topic], timeout).get(settings.dlq_topic)
    dlq_limit = dlq_told or (dlq_wanted if settings.dlq_topic in missing else None)
    dlq_limit = dlq_limit or broker_limit or KAFKA_DEFAULT_MESSAGE_BYTES
    if dlq_limit < dlq_wanted:
        log.warning(
            "topic %r takes records of up to %d bytes, the inputs up to %d: a dead letter "
            "larger than that is cut (dlq.value.bytes says how large it was); set its "
            "max.message.bytes to %d to keep every dead letter whole",
            settings.dlq_topic, dlq_limit, input_limit, dlq_wanted,
        )  # fmt: skip
    limits = RecordLimits(inputs=input_limit, dead_letters=dlq_limit)
    return Cluster(metadata.cluster_id, tuple(missing), limits)


def _topic_message_bytes(admin: Any, topics: list[str], timeout: float) -> dict[str, int]:
    """Each topic's ``max.message.bytes``, where the broker tells it."""
    resources = [ConfigResource(ResourceType.TOPIC, topic) for topic in topics]
    return {
        resource.name: value
        for resource, value in _described(admin, resources, "max.message.bytes", timeout).items()
    }


def _broker_message_bytes(admin: Any, metadata: Any, timeout: float) -> int | None:
    """The brokers' ``message.max.bytes`` (the smallest, where they differ), if told."""
    resources = [ConfigResource(ResourceType.BROKER, str(b)) for b in metadata.brokers]
    told = _described(admin, resources, "message.max.bytes", timeout)
    return min(told.values()) if told else None


def _described(admin: Any, resources: list[Any], name: str, timeout: float) -> dict[Any, int]:
    """The integer config ``name`` of each resource that has it (brokers may not say)."""
    if not resources:
        return {}
    found: dict[Any, int] = {}
    try:
        futures = admin.describe_configs(resources, request_timeout=timeout)
    except KafkaException as exc:
        log.warning("cannot describe %s (%s): assuming Kafka's defaults", name, exc)
        return {}
    for resource, future in futures.items():
        try:
            entry = future.result().get(name)
        except KafkaException as exc:
            log.warning("cannot describe %s of %s (%s)", name, resource, exc)
            continue
        if entry is not None and entry.value is not None and str(entry.value).isdigit():
            found[resource] = int(entry.value)
    return found
