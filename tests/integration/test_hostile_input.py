"""Property: whatever is thrown at a running worker, it stays up and accounts for every record.

Hypothesis writes records to every topic the worker reads (events, features
and the control topic): any size up to what the topics hold, any bytes as key
and value, tombstones, valid events and near misses, headers with binary
values, repeated names and large values. After each batch of records:

- the worker is alive and ready;
- every events record ended as exactly one score or one dead letter (by its
  partition and offset), every features record as one applied update or one
  dead letter;
- for every key, scores follow their events' offsets.

Bounded by ``max_examples`` so that ``make test`` stays short; ``make soak``
runs the same property with many more examples.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import deadletter
from streams.harness import OutputReader, WorkerProcess, metric_value
from tests.integration.conftest import PARTITIONS, Deployment, Published

#: What the input topics hold in this test (their max.message.bytes): records reach it.
TOPIC_LIMIT = 256 * 1024
EXAMPLES = int(os.environ.get("SOAK_EXAMPLES", "30"))
ENTITIES = [f"acct-{i}" for i in range(8)] + ["ünï-☃", "a b", "x" * 300]


def event(entity: str, event_id: str, **extra: object) -> dict[str, object]:
    return {
        "event_id": event_id, "entity_id": entity, "ts": 1_763_769_600.5, "amount": 12.5,
        "currency": "EUR", "merchant": "m-1", "country": "DE", "channel": "web", **extra,
    }  # fmt: skip


@st.composite
def filler(draw: st.DrawFn, most: int) -> bytes:
    """Bytes of any length up to ``most``, cheap to make even when large."""
    size = draw(st.one_of(st.integers(0, 64), st.integers(0, most), st.just(most)))
    return random.Random(draw(st.integers(0, 2**32))).randbytes(size)


@st.composite
def value_of(draw: st.DrawFn, entity: str, event_id: str) -> bytes | None:
    kind = draw(st.sampled_from(
        ["valid", "valid", "valid", "extra", "tombstone", "bytes", "near", "escapes", "big",
         "numbers", "not-object"]
    ))  # fmt: skip
    if kind == "valid":
        return orjson.dumps(event(entity, event_id))
    if kind == "extra":  # unknown fields, any JSON in them: still valid
        junk = draw(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                                 lambda inner: st.lists(inner, max_size=4)
                                 | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                                 max_leaves=20))  # fmt: skip
        # The standard library's JSON: it writes integers of any size and escapes surrogates.
        return json.dumps(event(entity, event_id, junk=junk)).encode()
    if kind == "tombstone":
        return None
    if kind == "bytes":
        return draw(filler(2048))
    if kind == "near":  # one field wrong
        field = draw(st.sampled_from(["amount", "currency", "channel", "ts", "entity_id"]))
        wrong = draw(st.sampled_from([-1, "€UR", "fax", None, "", [1], 1e308]))
        return orjson.dumps(event(entity, event_id, **{field: wrong}))
    if kind == "escapes":  # lone surrogates, NUL, duplicate keys: written by hand
        text = draw(st.sampled_from(["\\ud800", "\\u0000", "\\udfff\\ud800", '\\"', "ü"]))
        body = orjson.dumps(event(entity, event_id)).decode()
        return f'{body[:-1]},"merchant":"{text}","amount":1.0,"x":"{text}"}}'.encode()
    if kind == "big":  # valid JSON of any size up to what the topic holds
        pad = draw(st.integers(0, TOPIC_LIMIT - 1_000))
        return orjson.dumps(event(entity, event_id, pad="p" * pad))
    if kind == "numbers":
        number = draw(st.sampled_from(["1e999", "-0", "NaN", "1" * 400, "0.1e-400"]))
        return f'{{"event_id":"{event_id}","entity_id":"{entity}","ts":{number},"amount":{number},"currency":"EUR","merchant":"m","country":"DE","channel":"web"}}'.encode()  # noqa: E501
    return draw(st.sampled_from([b"[]", b"null", b"42", b'"s"', b"{", b"\xff\xfe"]))


@st.composite
def record(draw: st.DrawFn) -> tuple[str, Published]:
    topic = draw(st.sampled_from(["events"] * 6 + ["features"] * 2 + ["control"]))
    entity = draw(st.sampled_from(ENTITIES))
    event_id = f"e-{draw(st.integers(0, 10**9))}"
    key_kind = draw(st.sampled_from(["entity", "entity", "entity", "none", "bytes", "other"]))
    key: bytes | None = {
        "entity": entity.encode(), "none": None, "other": b"acct-0",
        "bytes": draw(filler(512)),
    }[key_kind]  # fmt: skip
    if topic == "events":
        value = draw(value_of(entity, event_id))
    elif topic == "features":
        value = draw(st.one_of(
            st.builds(lambda x: orjson.dumps({"entity_id": entity, "chargeback_rate": x}),
                      st.floats(allow_nan=False, allow_infinity=False)),
            st.none(), filler(1024),
            st.just(orjson.dumps({"entity_id": entity, "f": "not a number"})),
        ))  # fmt: skip
    else:
        key = draw(st.sampled_from([b"plan", None, b"other"]))
        value = draw(st.one_of(st.none(), filler(256), st.just(b'{"primary": 5}')))
    headers = draw(st.lists(
        st.tuples(st.sampled_from(["trace", "trace", "ü", "dlq.stage", "x" * 200, ""]),
                  st.one_of(filler(64), filler(20_000))),
        max_size=4,
    ))  # fmt: skip
    size = len(key or b"") + len(value or b"") + sum(len(n) + len(v) for n, v in headers)
    if size > TOPIC_LIMIT - 500:  # what the topic holds: the producer cannot send more
        headers = []
    return topic, Published(key, value, headers or None)


@dataclass
class Ledger:
    """Everything published so far, and what must have come of it."""

    events: set[tuple[int, int]]
    features: int = 0


def producer(deployment: Deployment) -> Producer:
    return Producer({
        "bootstrap.servers": deployment.bootstrap, "linger.ms": 2,
        "partitioner": "murmur2_random", "message.max.bytes": 2 * TOPIC_LIMIT,
    })  # fmt: skip


def accounted(
    reader: OutputReader, worker: WorkerProcess, deployment: Deployment, ledger: Ledger
) -> bool:
    """Whether every record so far has its outcome (and none has two)."""
    out = reader.output
    outcomes: Counter[tuple[int, int]] = Counter(
        (value["source"]["partition"], value["source"]["offset"]) for _, value in out.scores
    )
    feature_letters = 0
    for letter in out.dead:
        headers = dict(letter.headers() or [])
        if headers[deadletter.SOURCE_TOPIC].decode() == deployment.topics["features"]:
            feature_letters += 1
            continue
        source = (int(headers[deadletter.SOURCE_PARTITION]), int(headers[deadletter.SOURCE_OFFSET]))
        outcomes[source] += 1
    twice = [source for source, count in outcomes.items() if count > 1]
    assert not twice, f"records with two outcomes: {twice[:5]}"
    assert set(outcomes) <= ledger.events
    applied = metric_value(worker.metrics(), "streamscore_feature_updates_total")
    assert applied + feature_letters <= ledger.features
    return set(outcomes) == ledger.events and applied + feature_letters == ledger.features


@pytest.mark.broker
def test_no_record_on_any_topic_stops_the_worker_or_goes_unaccounted(
    deployment: Deployment,
) -> None:
    admin = AdminClient({"bootstrap.servers": deployment.bootstrap})
    config = {"max.message.bytes": str(TOPIC_LIMIT)}
    topics = [NewTopic(deployment.topics[name], PARTITIONS, 1, config=config)
              for name in ("events", "features")]  # fmt: skip
    for future in admin.create_topics(topics).values():
        future.result(timeout=15)
    worker = deployment.worker()
    worker.wait_ready()
    reader = deployment.reader()
    send = producer(deployment)
    ledger = Ledger(set())

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.lists(record(), min_size=1, max_size=25))
    def throw(batch: list[tuple[str, Published]]) -> None:
        by_topic: dict[str, list[Published]] = defaultdict(list)
        for topic, published in batch:
            by_topic[topic].append(published)
        for topic, records in by_topic.items():
            deployment.publish(topic, records, send)
        ledger.events.update((r.partition, r.offset) for r in by_topic["events"])
        ledger.features += len(by_topic["features"])
        reader.until(lambda _: accounted(reader, worker, deployment, ledger), 60)
        assert accounted(reader, worker, deployment, ledger), "records without an outcome"
        assert worker.returncode is None, "the worker stopped"
        assert worker.get("/health/ready")[0] == 200

    try:
        throw()
        assert reader.output.first_scores_in_order()
        assert reader.output.scores, "nothing valid was ever thrown"
    finally:
        reader.close()
