"""`streamscore dlq replay` against the embedded broker, with real workers.

Events that a broken model could not score are dead-lettered; after the fix
(the default model), replaying the `model` stage puts them back on the events
topic byte for byte, without the dlq.* headers, in their original partition,
and the worker scores them. Records that are still malformed are
dead-lettered again, as their content dictates.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from schemas import deadletter
from tests.integration.conftest import PARTITIONS, Deployment, Published
from tests.integration.records import read_topic, streamscore
from tests.integration.test_model_failures import POISON_AMOUNT, poisoned_artifact

N_EVENTS = 40
POISON = {5, 17, 29}


def events() -> list[Published]:
    records = []
    for i in range(N_EVENTS):
        event = {
            "event_id": f"e-{i}", "entity_id": f"acct-{i % 8}", "ts": 1_763_769_600.0 + i,
            "amount": POISON_AMOUNT if i in POISON else 20.0, "currency": "EUR",
            "merchant": "m-1", "country": "DE", "channel": "web",
        }  # fmt: skip
        key = str(event["entity_id"]).encode()
        records.append(Published(key, orjson.dumps(event), [("trace-id", f"t-{i}".encode())]))
    return records


def malformed() -> list[Published]:
    """Two events that fail validation (lower-case currency, negative amount)."""
    bad = {"event_id": "bad-1", "entity_id": "acct-1", "ts": 1.0, "amount": 3.0,
           "currency": "eur", "merchant": "m-1", "country": "DE", "channel": "web"}  # fmt: skip
    worse = {**bad, "event_id": "bad-2", "entity_id": "acct-2", "amount": -1}
    return [
        Published(b"acct-1", orjson.dumps(bad), [("origin", b"crm")]),
        Published(b"acct-2", orjson.dumps(worse), None),
    ]


@pytest.mark.broker
def test_replaying_model_dead_letters_after_the_fix_scores_them(
    deployment: Deployment, tmp_path: Path
) -> None:
    env = deployment.env(tmp_path / "cli")
    broken = deployment.worker(
        "broken", STREAMSCORE_MODEL=str(poisoned_artifact(tmp_path / "poisoned"))
    )
    broken.wait_ready()
    published = deployment.publish("events", [*events(), *malformed()])
    reader = deployment.reader()
    out = reader.until(lambda o: len(o.scores) + len(o.dead) >= len(published), 60)
    assert (len(out.scores), len(out.dead)) == (N_EVENTS - len(POISON), len(POISON) + 2)
    assert broken.terminate() == 0

    # A dry run lists the dead letters and counts them by stage, and publishes nothing.
    dry = streamscore(env, "dlq", "replay", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert sum(line.startswith("would replay ") and "->" in line for line in lines) == 5
    assert lines[-1] == (
        f"would replay 5 dead letters from {deployment.topics['dlq']} "
        "(by stage: model=3, validate=2)"
    )
    events_topic = deployment.topics["events"]
    assert len(read_topic(deployment.bootstrap, events_topic, PARTITIONS)) == len(published)

    # Replay the model stage: byte-exact, original headers, original partition.
    replay = streamscore(env, "dlq", "replay", "--stage", "model")
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.splitlines() == [
        f"replayed 3 dead letters from {deployment.topics['dlq']} (by stage: model=3)",
        "skipped 2: other stage (--stage)",
    ]
    ends = {}
    for record in published:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    on_topic = read_topic(deployment.bootstrap, events_topic, PARTITIONS)
    replayed = [m for m in on_topic if (m.offset() or 0) >= ends.get(m.partition() or 0, 0)]
    originals = {orjson.loads(r.value or b"")["event_id"]: r for r in published[:N_EVENTS]}
    assert sorted(orjson.loads(m.value() or b"")["event_id"] for m in replayed) == sorted(
        f"e-{i}" for i in POISON
    )
    for message in replayed:
        original = originals[orjson.loads(message.value() or b"")["event_id"]]
        assert (message.key(), message.value()) == (original.key, original.value)
        assert message.headers() == original.headers
        assert message.partition() == original.partition

    # The fixed worker (the default model) resumes from the committed offsets and scores them.
    fixed = deployment.worker("fixed")
    fixed.wait_ready()
    poison_ids = {f"e-{i}" for i in POISON}
    out = reader.until(lambda o: poison_ids <= o.scored_ids(), 60)
    rescored = [v for _, v in out.scores if v["event_id"] in poison_ids]
    assert len(rescored) == 3
    assert {v["model"] for v in rescored} == {"fraud-mlp"}

    # Still-malformed records go back and are dead-lettered again, with one set of dlq.* headers.
    again = streamscore(env, "dlq", "replay", "--stage", "validate")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].startswith("replayed 2 dead letters")
    out = reader.until(lambda o: len(o.dead) >= 7, 60)
    reader.poll(0.5)
    reader.close()
    assert len(out.dead) == 7
    for message in out.dead[-2:]:
        headers = message.headers() or []
        original = next(r for r in published[N_EVENTS:] if r.value == message.value())
        assert headers[: -len(deadletter.HEADER_NAMES)] == (original.headers or [])
        assert dict(headers)[deadletter.STAGE] == b"validate"
    assert len(out.scores) == N_EVENTS  # nothing else was scored twice


@pytest.mark.broker
def test_replay_errors_are_one_clear_line_with_a_non_zero_exit(
    deployment: Deployment, tmp_path: Path
) -> None:
    env = deployment.env(tmp_path)
    missing = streamscore({**env, "STREAMSCORE_DLQ_TOPIC": "no-such-dlq"}, "dlq", "replay")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "streamscore: topic 'no-such-dlq' does not exist; check STREAMSCORE_DLQ_TOPIC"
    ]
    bad_time = streamscore(env, "dlq", "replay", "--since", "yesterday")
    assert bad_time.returncode == 2
    assert "--since" in bad_time.stderr
    both = streamscore(env, "dlq", "replay", "--since", "0", "--from-offset", "3")
    assert both.returncode == 2
    assert "cannot be combined" in both.stderr
