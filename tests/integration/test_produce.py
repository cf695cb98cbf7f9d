"""`streamscore produce`: synthetic traffic to whatever STREAMSCORE_BROKER points at."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from pipelines.fraud.synthetic import SyntheticWorld
from tests.integration.conftest import PARTITIONS, Deployment
from tests.integration.records import COMMAND, create_topics, read_topic, streamscore


@pytest.mark.broker
def test_publishes_profiles_then_events_with_the_requested_share_of_malformed_ones(
    deployment: Deployment, tmp_path: Path
) -> None:
    env = deployment.env(tmp_path)
    topics = deployment.topics
    create_topics(deployment.bootstrap, [topics["events"], topics["features"]], PARTITIONS)
    args = ["--events", "300", "--rate", "0", "--entities", "30", "--malformed", "0.02"]
    result = streamscore(env, "produce", *args)
    assert result.returncode == 0, result.stderr
    n_profiles = len(SyntheticWorld(seed=11, n_entities=30).profiles())
    assert result.stdout.strip() == (
        f"published 300 events (6 malformed) to {deployment.topics['events']} and "
        f"{n_profiles} profiles to {deployment.topics['features']}"
    )
    profiles = read_topic(deployment.bootstrap, deployment.topics["features"], PARTITIONS)
    assert len(profiles) == n_profiles
    records = read_topic(deployment.bootstrap, deployment.topics["events"], PARTITIONS)
    assert len(records) == 306
    valid = []
    for message in records:
        try:
            event = orjson.loads(message.value() or b"")
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("event_id", "").startswith("e-"):
            assert message.key() == str(event["entity_id"]).encode()
            valid.append(event["event_id"])
    assert len(set(valid)) == 300


@pytest.mark.broker
def test_runs_until_sigterm_with_events_zero_and_exits_cleanly(
    deployment: Deployment, tmp_path: Path
) -> None:
    env = {**os.environ, **deployment.env(tmp_path)}
    create_topics(deployment.bootstrap, [deployment.topics["events"]], PARTITIONS)
    args = ["produce", "--events", "0", "--rate", "200", "--entities", "10", "--no-profiles"]
    process = subprocess.Popen([*COMMAND, *args], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until some events are on the topic
        if read_topic(deployment.bootstrap, deployment.topics["events"], PARTITIONS):
            break
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    sent = int(stdout.split()[1])
    assert sent > 0
    on_topic = read_topic(deployment.bootstrap, deployment.topics["events"], PARTITIONS)
    assert len(on_topic) == sent  # everything counted was delivered before the exit


def test_bad_arguments_exit_2() -> None:
    result = streamscore({}, "produce", "--malformed", "1.5")
    assert result.returncode == 2
    assert "--malformed between 0 and 1" in result.stderr
