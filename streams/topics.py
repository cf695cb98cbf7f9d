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
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streams.errors import BrokerError, TopicMismatchError
from streams.settings import Settings

log = logging.getLogger(__name__)

#: The tables the app keeps; their changelogs are ``<app id>-<table>-changelog``.
TABLES: tuple[str, ...] = ("profiles", "history")

#: The embedded broker's cluster id (the ``streamscore broker`` command sets it).
EMBEDDED_CLUSTER_IDS = frozenset({"streamscore-embedded", "tansu_cluster"})


@dataclass(frozen=True, slots=True)
class Cluster:
    cluster_id: str | None
    created: tuple[str, ...]

    @property
    def embedded(self) -> bool:
        """True on the embedded development broker (see ``streams.embedded``)."""
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
    if missing:
        futures = admin.create_topics(
            [NewTopic(name, settings.partitions, settings.replication_factor) for name in missing],
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
    return Cluster(metadata.cluster_id, tuple(missing))
