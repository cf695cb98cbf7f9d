"""Crash and restart: SIGKILL mid-stream loses nothing, keeps per-key order, counts once."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter, defaultdict

import orjson
import pytest

from pipelines.fraud.synthetic import SyntheticWorld
from streams.harness import Output
from tests.integration.conftest import Deployment, Published, event_record


def first_scores_in_order(out: Output) -> dict[bytes, list[int]]:
    """Per key, the source offsets of each event's *first* score, in the order read."""
    seen: set[str] = set()
    firsts: dict[bytes, list[int]] = defaultdict(list)
    for message, value in out.scores:
        if value["event_id"] not in seen:
            seen.add(value["event_id"])
            firsts[message.key()].append(value["source"]["offset"])
    return firsts


def assert_duplicates_are_identical(out: Output) -> int:
    """A duplicate after a crash names the same source; return how many there were."""
    source_of: dict[str, tuple[int, int]] = {}
    duplicates = 0
    for _, value in out.scores:
        source = (value["source"]["partition"], value["source"]["offset"])
        if value["event_id"] in source_of:
            duplicates += 1
            assert source_of[value["event_id"]] == source
        source_of[value["event_id"]] = source
    return duplicates


def expected_counts(records: list[Published]) -> Counter[str]:
    return Counter(orjson.loads(r.value)["entity_id"] for r in records)  # type: ignore[arg-type]


@pytest.mark.broker
def test_sigkill_mid_stream_then_restart_loses_nothing(deployment: Deployment) -> None:
    world = SyntheticWorld(seed=33, n_entities=200)
    records = [event_record(item.event) for item in world.events(12_000)]
    first = deployment.worker("w1")
    first.wait_ready()

    def publish_paced() -> None:
        producer = deployment.producer()
        for start in range(0, len(records), 300):
            deployment.publish("events", records[start : start + 300], producer)
            time.sleep(0.03)

    publisher = threading.Thread(target=publish_paced)
    publisher.start()
    reader = deployment.reader()
    reader.until(lambda o: len(o.scores) >= 3000, 60)
    assert len(reader.output.scores) >= 3000
    assert first.kill() == -9  # SIGKILL mid-stream: no drain, no commit
    publisher.join()

    second = deployment.worker("w2", data_dir=deployment.tmp / "data-w1")  # same local state
    second.wait_ready()
    ids = {orjson.loads(r.value)["event_id"] for r in records}  # type: ignore[arg-type]
    out = reader.until(lambda o: o.scored_ids() >= ids, 90)
    reader.close()

    assert out.scored_ids() == ids  # nothing lost
    assert_duplicates_are_identical(out)
    for key, offsets in first_scores_in_order(out).items():
        assert offsets == sorted(offsets), key
    # The online history counted every event exactly once, replays included.
    assert_history_counts(deployment, expected_counts(records))
    assert second.terminate() == 0


@pytest.mark.broker
def test_state_is_recovered_from_the_changelog_with_an_empty_data_dir(
    deployment: Deployment,
) -> None:
    world = SyntheticWorld(seed=34, n_entities=50)
    before = [event_record(item.event) for item in world.events(3000)]
    first = deployment.worker("w1")
    first.wait_ready()
    deployment.publish("events", before)
    reader = deployment.reader()
    reader.until(lambda o: len(o.scored_ids()) >= len(before), 60)
    # Everything committed: nothing is replayed, so the new worker's history can only be
    # right if it restores every changelog record, the last ones included.
    assert first.terminate() == 0
    shutil.rmtree(deployment.tmp / "data-w1")  # the machine is gone: only Kafka remains

    second = deployment.worker("w2")  # a new, empty data directory
    second.wait_ready()
    after = [event_record(item.event) for item in world.events(1000)]
    deployment.publish("events", after)
    total = len(before) + len(after)
    out = reader.until(lambda o: len(o.scored_ids()) >= total, 60)
    reader.close()
    assert len(out.scored_ids()) == total
    # Counts continue from the recovered state: neither lost nor double counted.
    assert_history_counts(deployment, expected_counts(before + after))
    assert second.terminate() == 0


def assert_history_counts(deployment: Deployment, expected: Counter[str]) -> None:
    deadline = time.monotonic() + 30
    while True:  # the last changelog writes may still be landing
        counts = deployment.history()
        if counts == dict(expected) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    wrong = {e: (counts.get(e), n) for e, n in expected.items() if counts.get(e) != n}
    assert not wrong, f"{len(wrong)} entities miscounted (got, expected): {list(wrong.items())[:5]}"


@pytest.mark.broker
def test_sigterm_drains_in_flight_work_and_commits_it_exactly(deployment: Deployment) -> None:
    world = SyntheticWorld(seed=35, n_entities=200)
    records = [event_record(item.event) for item in world.events(20_000)]
    first = deployment.worker("w1")
    first.wait_ready()
    deployment.publish("events", records)  # a backlog: plenty in flight when SIGTERM lands
    reader = deployment.reader()
    reader.until(lambda o: len(o.scores) >= 3000, 60)
    started = time.monotonic()
    assert first.terminate(timeout=30) == 0
    took = time.monotonic() - started
    assert took < 20, f"shutdown took {took:.1f}s"

    second = deployment.worker("w2", data_dir=deployment.tmp / "data-w1")
    second.wait_ready()
    ids = {orjson.loads(r.value)["event_id"] for r in records}  # type: ignore[arg-type]
    out = reader.until(lambda o: o.scored_ids() >= ids, 90)
    reader.close()
    assert out.scored_ids() == ids
    # What the first worker emitted it also committed: the second repeats nothing.
    assert len(out.scores) == len(ids)
    assert second.terminate() == 0
