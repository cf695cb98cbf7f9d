"""A worker process scores thousands of events end to end on the embedded broker."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipelines.fraud.synthetic import SyntheticWorld, malformed_values
from schemas import deadletter
from schemas.scores import Score
from streams.harness import metric_value
from tests.integration.conftest import PARTITIONS, Deployment, Published, event_record, kcat

N_EVENTS = 3000
N_ENTITIES = 300


def expected_stage(record: Published) -> str:
    """What the contract says a malformed record's dead letter stage is."""
    if record.value is None or len(record.value) + len(record.key or b"") > 64 * 1024:
        return "decode"
    try:
        orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return "decode"
    return "validate"


def malformed_records(world: SyntheticWorld) -> list[Published]:
    good = world.events(3)
    bad = [Published(b"acct-bad", value, None) for value in malformed_values(5, 20)]
    huge = dict(good[0].event, merchant="m" * (64 * 1024))
    bad += [
        Published(b"acct-000001", None, [("trace-id", b"t-1")]),  # a tombstone
        Published(b"acct-000001", orjson.dumps(huge), None),  # over 64 KiB
        Published(b"someone-else", orjson.dumps(good[1].event), None),  # key is not entity_id
        Published(None, orjson.dumps(good[2].event), [("a", b"1"), ("b", b"2")]),  # no key
        Published(b"\xff\xfe", orjson.dumps(good[2].event), None),  # key not UTF-8
        Published(b"acct-bad", b'{"event_id": "x"', [("trace-id", b"t-2"), ("trace-id", b"t-3")]),
    ]
    return bad


@pytest.mark.broker
def test_every_event_is_scored_once_in_order_and_every_bad_record_dead_lettered(
    deployment: Deployment,
) -> None:
    world = SyntheticWorld(seed=21, n_entities=N_ENTITIES)
    deployment.publish(
        "features",
        [Published(str(p["entity_id"]).encode(), orjson.dumps(p), None)
         for p in world.profiles()[: N_ENTITIES // 2]],
    )  # fmt: skip
    bad_updates = deployment.publish(
        "features",
        [
            Published(b"acct-000002", b'{"entity_id": "acct-000002", "age": "old"}', None),
            Published(b"acct-000003", b'{"entity_id": "acct-999999"}', [("src", b"crm")]),
        ],
    )
    worker = deployment.worker()
    worker.wait_ready()

    valid = [event_record(item.event) for item in world.events(N_EVENTS)]
    bad = malformed_records(world)
    step = N_EVENTS // len(bad)
    mixed = list(valid)
    for i, record in reversed(list(enumerate(bad))):
        mixed.insert(i * step + 1, record)  # spread among the valid events
    deployment.publish("events", mixed)
    # One more malformed record, with a header, through a real command-line client.
    kcat("-P", "-b", deployment.bootstrap, "-t", deployment.topics["events"],
         "-k", "acct-kcat", "-H", "origin=kcat", "-p", "0", stdin=b"{not json")  # fmt: skip
    n_bad = len(bad) + 1 + len(bad_updates)

    reader = deployment.reader()
    out = reader.until(lambda o: len(o.scores) >= N_EVENTS and len(o.dead) >= n_bad, 90)
    reader.poll(1.0)  # anything beyond what was expected would show up now
    reader.close()

    # Scores: exactly one per valid event, well formed, pointing back at their event.
    by_id = {orjson.loads(r.value)["event_id"]: r for r in valid}  # type: ignore[arg-type]
    ids = [value["event_id"] for _, value in out.scores]
    assert len(ids) == N_EVENTS
    assert set(ids) == set(by_id)
    for message, _ in out.scores:
        score = Score.model_validate_json(message.value())
        event = orjson.loads(by_id[score.event_id].value)  # type: ignore[arg-type]
        published = by_id[score.event_id]
        assert message.key() == score.entity_id.encode() == published.key
        assert (score.source.topic, score.source.partition, score.source.offset) == (
            deployment.topics["events"],
            published.partition,
            published.offset,
        )
        assert (score.model, score.model_version, score.degraded) == ("fraud-mlp", "1", False)
        assert score.event_ts == event["ts"]
        assert 0.0 <= score.score <= 1.0

    # Per-key order: a key's scores come in the order of its events' offsets.
    offsets_by_key: dict[bytes, list[int]] = defaultdict(list)
    for message, value in out.scores:
        offsets_by_key[message.key()].append(value["source"]["offset"])
    assert len(offsets_by_key) == len({r.key for r in valid}) > N_ENTITIES * 0.9
    for key, offsets in offsets_by_key.items():
        assert offsets == sorted(offsets), key

    # Dead letters: byte-exact, original headers first, then the contract's.
    expected_bad = {(r.partition, r.offset): r for r in bad}
    assert len(out.dead) == n_bad
    seen = set()
    kcat_offset = -1
    for message in out.dead:
        headers = message.headers() or []
        ours = dict(headers[-len(deadletter.HEADER_NAMES) :])
        assert list(ours) == list(deadletter.HEADER_NAMES)
        partition = int(ours[deadletter.SOURCE_PARTITION])
        offset = int(ours[deadletter.SOURCE_OFFSET])
        assert ours[deadletter.APP] == deployment.app_id.encode()
        assert ours[deadletter.ERROR_CLASS]
        assert 0 < len(ours[deadletter.ERROR_MESSAGE]) <= 1024
        if ours[deadletter.SOURCE_TOPIC] == deployment.topics["features"].encode():
            update = next(u for u in bad_updates if (u.partition, u.offset) == (partition, offset))
            assert (message.key(), message.value()) == (update.key, update.value)
            assert headers[: -len(deadletter.HEADER_NAMES)] == (update.headers or [])
            assert ours[deadletter.STAGE] == b"validate"
            continue
        assert ours[deadletter.SOURCE_TOPIC] == deployment.topics["events"].encode()
        seen.add((partition, offset))
        if message.key() == b"acct-kcat":
            kcat_offset = offset
            assert (partition, message.value()) == (0, b"{not json")
            assert headers[0] == ("origin", b"kcat")
            assert ours[deadletter.STAGE] == b"decode"
            continue
        original = expected_bad[(partition, offset)]
        assert message.key() == original.key
        assert message.value() == original.value
        assert headers[: -len(deadletter.HEADER_NAMES)] == (original.headers or [])
        assert ours[deadletter.STAGE].decode() == expected_stage(original), original
        assert int(ours[deadletter.SOURCE_TIMESTAMP]) == original.timestamp
    assert len(seen) == n_bad - len(bad_updates)  # each bad event dead-lettered exactly once

    # Metrics tell the same story (once the last acknowledgements are in).
    metrics = worker.settled_metrics()
    assert metric_value(metrics, "streamscore_events_total", {"outcome": "scored"}) == N_EVENTS
    n_bad_events = n_bad - len(bad_updates)  # bad feature updates are not events
    assert metric_value(metrics, "streamscore_events_total", {"outcome": "dlq"}) == n_bad_events
    assert metric_value(metrics, "streamscore_feature_updates_total") == N_ENTITIES // 2
    stages = [expected_stage(r) for r in bad] + ["decode"] + ["validate"] * len(bad_updates)
    for stage in ("decode", "validate"):
        assert metric_value(metrics, "streamscore_dlq_total", {"stage": stage}) == stages.count(
            stage
        )
    assert metric_value(metrics, "streamscore_batch_size_sum") == N_EVENTS
    assert metric_value(metrics, "streamscore_end_to_end_latency_seconds_count") == N_EVENTS
    # Kafka's share before the worker and the worker's own are parts of each event's
    # end-to-end time, which also holds the produce acknowledgement.
    assert metric_value(metrics, "streamscore_processing_latency_seconds_count") == N_EVENTS
    assert metric_value(metrics, "streamscore_arrival_latency_seconds_count") == N_EVENTS
    in_worker = metric_value(metrics, "streamscore_processing_latency_seconds_sum")
    before = metric_value(metrics, "streamscore_arrival_latency_seconds_sum")
    assert in_worker > 0
    assert before > 0
    assert before + in_worker < metric_value(metrics, "streamscore_end_to_end_latency_seconds_sum")
    assert metric_value(metrics, "streamscore_batch_size_bucket", {"le": "+Inf"}) == metric_value(
        metrics, "streamscore_batch_size_bucket", {"le": "256.0"}
    )  # no batch above STREAMSCORE_MAX_BATCH_SIZE
    assert metric_value(metrics, "streamscore_in_flight") == 0
    assert metric_value(metrics, "streamscore_ready") == 1
    assert metric_value(metrics, "streamscore_consumer_lag") == 0  # all committed by now
    assert (
        metric_value(metrics, "streamscore_model_info",
                     {"model": "fraud-mlp", "version": "1", "device": "cpu"}) == 1
    )  # fmt: skip
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: `make test` installs it (Debian prometheus)"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=metrics.encode(), capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr

    # A real command-line client sees the same scores.
    lines = kcat("-C", "-b", deployment.bootstrap, "-t", deployment.topics["scores"],
                 "-o", "beginning", "-e", "-q", "-f", "%k\n").splitlines()  # fmt: skip
    assert len(lines) == N_EVENTS

    # SIGTERM drains and commits everything before a clean exit.
    assert worker.terminate() == 0
    consumer = Consumer({"bootstrap.servers": deployment.bootstrap, "group.id": deployment.app_id})
    committed = consumer.committed(
        [TopicPartition(deployment.topics["events"], p) for p in range(PARTITIONS)], timeout=10
    )
    consumer.close()
    ends: dict[int, int] = defaultdict(int)
    for record in mixed:
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    ends[0] = max(ends[0], kcat_offset + 1)
    assert {tp.partition: tp.offset for tp in committed} == dict(ends)
