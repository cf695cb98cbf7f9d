"""Exactly-once processing: transactions commit offsets with outputs; zombies are fenced.

What the embedded broker cannot show: it hands aborted records to
read_committed readers too (it accepts transactions but does not filter
them), so the duplicates a killed worker's open transaction leaves behind
stay visible there. What is checked instead: offsets are committed by the
transactions, nothing committed is ever produced twice, nothing is lost, a
fenced zombie cannot commit, and table recovery reads a transactional
changelog to its end.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter, defaultdict

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipelines.fraud.synthetic import SyntheticWorld, malformed_values
from tests.integration.conftest import PARTITIONS, Deployment, Published, event_record
from tests.integration.test_restart import assert_history_counts, expected_counts

EXACTLY_ONCE = {
    "STREAMSCORE_PROCESSING_GUARANTEE": "exactly_once",
    "STREAMSCORE_COMMIT_INTERVAL_MS": "300",
}


def committed(deployment: Deployment) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": deployment.bootstrap, "group.id": deployment.app_id})
    positions = consumer.committed(
        [TopicPartition(deployment.topics["events"], p) for p in range(PARTITIONS)], timeout=10
    )
    consumer.close()
    return {tp.partition: tp.offset for tp in positions}


@pytest.mark.broker
def test_committed_transactions_are_never_repeated_and_nothing_is_lost(
    deployment: Deployment,
) -> None:
    world = SyntheticWorld(seed=71, n_entities=150)
    valid = [event_record(item.event) for item in world.events(8000)]
    bad = [Published(b"acct-bad", v, None) for v in malformed_values(3, 40)]
    records = list(valid)
    for i, record in enumerate(bad):
        records.insert(i * 200 + 7, record)
    first = deployment.worker("w1", **EXACTLY_ONCE)
    first.wait_ready()

    def publish_paced() -> None:
        producer = deployment.producer()
        for start in range(0, len(records), 200):
            deployment.publish("events", records[start : start + 200], producer)
            time.sleep(0.05)

    publisher = threading.Thread(target=publish_paced)
    publisher.start()
    reader = deployment.reader()
    reader.until(lambda o: len(o.scores) >= 2500, 60)
    assert first.kill() == -9  # mid-transaction
    at_kill = committed(deployment)
    assert sum(at_kill.values()) > 0  # transactions did commit offsets
    publisher.join()

    second = deployment.worker("w2", data_dir=deployment.tmp / "data-w1", **EXACTLY_ONCE)
    second.wait_ready()
    ids = {orjson.loads(r.value)["event_id"] for r in valid}  # type: ignore[arg-type]
    out = reader.until(lambda o: o.scored_ids() >= ids and len(o.dead) >= len(bad), 120)
    reader.close()

    assert out.scored_ids() == ids  # nothing lost
    copies = Counter((v["source"]["partition"], v["source"]["offset"]) for _, v in out.scores)
    for (partition, offset), count in copies.items():
        if offset < at_kill[partition]:  # inside a committed transaction: exactly once
            assert count == 1, (partition, offset)
    assert out.first_scores_in_order()
    assert_history_counts(deployment, expected_counts(valid))  # recovered from the changelog
    assert second.terminate() == 0
    ends: dict[int, int] = defaultdict(int)
    for record in records:
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    assert committed(deployment) == dict(ends)  # SIGTERM committed the last transaction


@pytest.mark.broker
def test_a_paused_zombie_is_fenced_and_cannot_commit(deployment: Deployment) -> None:
    quick = {
        **EXACTLY_ONCE,
        "STREAMSCORE_SESSION_TIMEOUT_MS": "4000",
        "STREAMSCORE_HEARTBEAT_INTERVAL_MS": "500",
        "STREAMSCORE_REBALANCE_TIMEOUT_MS": "8000",
        "STREAMSCORE_DRAIN_TIMEOUT_MS": "4000",
    }
    world = SyntheticWorld(seed=72, n_entities=100)
    records = [event_record(item.event) for item in world.events(6000)]
    zombie = deployment.worker("w1", **quick)
    zombie.wait_ready()
    assert zombie.process is not None

    def publish_paced() -> None:
        producer = deployment.producer()
        for start in range(0, len(records), 100):
            deployment.publish("events", records[start : start + 100], producer)
            time.sleep(0.05)

    publisher = threading.Thread(target=publish_paced)
    publisher.start()
    reader = deployment.reader()
    reader.until(lambda o: len(o.scored_ids()) >= 1000, 60)
    # Frozen mid-stream, with outputs in its open transaction: its session will expire.
    os.kill(zombie.process.pid, signal.SIGSTOP)
    successor = deployment.worker("w2", **quick)
    successor.wait_ready()  # owns every partition once the zombie's session has expired
    publisher.join()
    total = {orjson.loads(r.value)["event_id"] for r in records}  # type: ignore[arg-type]
    reader.until(lambda o: o.scored_ids() >= total, 90)
    assert reader.output.scored_ids() == total
    os.kill(zombie.process.pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while zombie.returncode is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert zombie.returncode not in (None, 0)  # it stopped itself instead of committing late
    log = zombie.log_path.read_text(errors="replace")
    assert "fenced" in log.lower()
    reader.close()
    successor.wait_ready(60)  # the zombie's brief return rebalanced the group once more
    assert successor.terminate() == 0
