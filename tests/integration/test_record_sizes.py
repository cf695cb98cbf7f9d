"""Records just under, at and over each size limit: a score or a dead letter, never a stop.

The limits: the contract's 64 KiB for an event, what the input topics hold
(their ``max.message.bytes``, read from the broker), and what the DLQ topic
takes. A record the DLQ cannot hold whole is dead-lettered cut, saying so;
before, the worker stopped on it, and again after every restart.
"""

from __future__ import annotations

import hashlib

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from schemas import deadletter
from schemas.profiles import MAX_RECORD_BYTES
from streams.kafka.topics import DEAD_LETTER_HEADROOM
from tests.integration.conftest import PARTITIONS, Deployment, Published

EVENTS_LIMIT = 200_000  # the events topic's max.message.bytes in this test
#: What a record batch of one record adds to the key and value (Kafka's v2 format).
BATCH_OVERHEAD = 70


def event_of_size(event_id: str, entity: str, size: int) -> Published:
    """A valid event whose key and value together are exactly ``size`` bytes."""
    body = {
        "event_id": event_id, "entity_id": entity, "ts": 1.5, "amount": 3.0,
        "currency": "EUR", "merchant": "m", "country": "DE", "channel": "web", "pad": "",
    }  # fmt: skip
    base = len(entity) + len(orjson.dumps(body))
    body["pad"] = "x" * (size - base)
    value = orjson.dumps(body)
    assert len(entity) + len(value) == size
    return Published(entity.encode(), value, None)


def create(deployment: Deployment, configs: dict[str, dict[str, str]]) -> None:
    admin = AdminClient({"bootstrap.servers": deployment.bootstrap})
    topics = [NewTopic(deployment.topics[name], PARTITIONS, 1, config=config)
              for name, config in configs.items()]  # fmt: skip
    for future in admin.create_topics(topics).values():
        future.result(timeout=15)


def max_message_bytes(deployment: Deployment, topic: str) -> int:
    admin = AdminClient({"bootstrap.servers": deployment.bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, topic)
    described = admin.describe_configs([resource])[resource].result(timeout=15)
    return int(described["max.message.bytes"].value)


def big_producer(deployment: Deployment) -> Producer:
    return Producer({"bootstrap.servers": deployment.bootstrap, "message.max.bytes": 5_000_000})


@pytest.mark.broker
def test_records_at_every_size_limit_end_as_a_score_or_a_dead_letter(
    deployment: Deployment,
) -> None:
    limits = {"max.message.bytes": str(EVENTS_LIMIT)}
    create(deployment, {"events": limits, "features": {"max.message.bytes": "150000"}})
    worker = deployment.worker()
    worker.wait_ready()
    dlq_limit = max_message_bytes(deployment, deployment.topics["dlq"])
    assert dlq_limit == EVENTS_LIMIT + DEAD_LETTER_HEADROOM  # made to hold what events hold

    at_limit = EVENTS_LIMIT - BATCH_OVERHEAD
    sizes = {
        "rule-under": MAX_RECORD_BYTES - 1,  # the contract's 64 KiB: scored
        "rule-at": MAX_RECORD_BYTES,  # scored
        "rule-over": MAX_RECORD_BYTES + 1,  # malformed: a dead letter, byte for byte
        "topic-under": at_limit - 1,  # what the events topic holds: dead letters, whole
        "topic-at": at_limit,
        "topic-over": 3 * EVENTS_LIMIT,  # more than the DLQ takes: a dead letter, cut
    }
    records = [event_of_size(name, f"acct-{name}", size) for name, size in sizes.items()]
    deployment.publish("events", records, big_producer(deployment))
    big_update = orjson.dumps({"entity_id": "acct-f", "x": 1.0, "pad": "y" * 400_000})
    update = Published(b"acct-f", big_update, [("trace", b"\xff" * 10)])
    deployment.publish("features", [update], big_producer(deployment))

    reader = deployment.reader()
    out = reader.until(lambda o: len(o.scores) >= 2 and len(o.dead) >= 5, 60)
    reader.poll(1.0)
    reader.close()
    assert sorted(value["event_id"] for _, value in out.scores) == ["rule-at", "rule-under"]
    by_key = {letter.key(): letter for letter in out.dead}
    assert len(out.dead) == 5
    for name in ("rule-over", "topic-under", "topic-at"):
        letter = by_key[f"acct-{name}".encode()]
        record = next(r for r in records if r.key == letter.key())
        assert letter.value() == record.value, name  # whole, byte for byte
        headers = dict(letter.headers() or [])
        assert headers[deadletter.ERROR_CLASS] == b"RecordTooLarge"
        assert deadletter.VALUE_BYTES not in headers
    for key, original in ((b"acct-topic-over", records[-1].value), (b"acct-f", big_update)):
        letter = by_key[key]
        assert original is not None
        headers = dict(letter.headers() or [])
        assert headers[deadletter.VALUE_BYTES] == str(len(original)).encode()
        assert headers[deadletter.VALUE_SHA256] == hashlib.sha256(original).hexdigest().encode()
        assert original.startswith(letter.value())  # the value cut to fit, from its start
        assert len(letter.value()) > dlq_limit - 2_000
        assert headers[deadletter.STAGE] == b"decode"
    assert dict(by_key[b"acct-f"].headers() or [])["trace"] == b"\xff" * 10
    assert worker.get("/health/ready")[0] == 200
    assert worker.returncode is None
    metrics = worker.settled_metrics()
    assert "streamscore_dlq_cut_total 2.0" in metrics


@pytest.mark.broker
def test_a_dlq_topic_smaller_than_the_inputs_gets_its_dead_letters_cut(
    deployment: Deployment,
) -> None:
    create(deployment, {"dlq": {"max.message.bytes": "100000"}})
    worker = deployment.worker()
    worker.wait_ready()
    records = [event_of_size(f"e-{i}", f"acct-{i}", size)
               for i, size in enumerate((99_000, 150_000, 900_000))]  # fmt: skip
    deployment.publish("events", records, big_producer(deployment))
    reader = deployment.reader()
    out = reader.until(lambda o: len(o.dead) >= 3, 60)
    reader.close()
    by_key = {letter.key(): letter for letter in out.dead}
    assert by_key[b"acct-0"].value() == records[0].value  # it fits: whole
    for key, record in ((b"acct-1", records[1]), (b"acct-2", records[2])):
        headers = dict(by_key[key].headers() or [])
        assert headers[deadletter.VALUE_BYTES] == str(len(record.value or b"")).encode()
        assert len(by_key[key].value()) < 100_000
    assert worker.returncode is None
