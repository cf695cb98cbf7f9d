"""`streamscore rollout` against the broker: the plan written, read back, and never half-made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from pipelines.fraud.artifact import packaged_artifacts_dir
from schemas.rollout import Canary, RolloutPlan
from streams.kafka.embedded import EmbeddedBroker
from streams.rollout.control import read_plan, write_plan
from streams.settings import load_settings
from tests.integration.artifacts import renamed

pytestmark = pytest.mark.broker

COMMAND = [sys.executable, "-m", "streams"]


@dataclass
class Control:
    """One control topic and one registry of our own on the shared broker."""

    bootstrap: str
    topic: str
    registry: Path
    data: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
        env.update(
            STREAMSCORE_BROKER=f"kafka://{self.bootstrap}",
            STREAMSCORE_CONTROL_TOPIC=self.topic,
            STREAMSCORE_MODEL_REGISTRY=str(self.registry),
            STREAMSCORE_DATA_DIR=str(self.data),
            **extra,
        )
        return env

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*COMMAND, "rollout", *args], env=self.env(**extra), capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip

    def ok(self, *args: str, **extra: str) -> dict[str, Any]:
        """Run a command that must succeed; its stdout as the plan JSON."""
        result = self.run(*args, **extra)
        assert result.returncode == 0, result.stderr
        plan: dict[str, Any] = json.loads(result.stdout)
        return plan

    def settings(self) -> Any:
        return load_settings(
            broker=f"kafka://{self.bootstrap}", control_topic=self.topic,
            model_registry=self.registry,
        )  # fmt: skip

    def exists(self) -> bool:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        return self.topic in admin.list_topics(timeout=10).topics

    def records(self) -> list[tuple[bytes | None, bytes | None]]:
        """Every record of the control topic, read to its end."""
        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
             "enable.partition.eof": True, "enable.auto.commit": False}
        )  # fmt: skip
        consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        found: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                for message in consumer.consume(100, 0.5):
                    error = message.error()
                    if error is None:
                        found.append((message.key(), message.value()))
                    elif error.code() == KafkaError._PARTITION_EOF:
                        return found
                    else:
                        raise AssertionError(error.str())
            raise AssertionError(f"{self.topic} not read to its end in 30 s")
        finally:
            consumer.close()


@pytest.fixture
def control(broker: EmbeddedBroker, tmp_path: Path) -> Control:
    return Control(
        broker.bootstrap, f"control-{uuid.uuid4().hex[:8]}", tmp_path / "registry",
        tmp_path / "data",
    )  # fmt: skip


def test_status_without_a_plan_shows_the_implied_plan_and_creates_nothing(
    control: Control,
) -> None:
    result = control.run("status")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "primary": "fraud-mlp:1", "canary": None, "shadow": None, "updated_ts": 0.0,
        "reason": "no plan written yet: the packaged default model",
    }  # fmt: skip
    assert f"no rollout plan on {control.topic} yet" in result.stderr
    plan = control.ok("status", STREAMSCORE_MODEL="fraud-lr:1")
    assert (plan["primary"], plan["canary"], plan["shadow"]) == ("fraud-lr:1", None, None)
    assert not control.exists()


def test_canary_is_written_compacted_and_read_back_by_status(control: Control) -> None:
    before = time.time()
    written = control.ok("canary", "fraud-deep", "--percent", "5")
    assert written["primary"] == "fraud-mlp:1"
    assert written["canary"] == {"model": "fraud-deep:1", "percent": 5.0}  # pinned
    assert written["shadow"] is None
    assert written["reason"] == "canary fraud-deep:1 at 5%"
    assert before <= written["updated_ts"] <= time.time()

    status = control.run("status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == written
    assert status.stderr == ""
    assert control.records() == [(b"plan", status.stdout.strip().encode())]

    admin = AdminClient({"bootstrap.servers": control.bootstrap})
    topic = admin.list_topics(timeout=10).topics[control.topic]
    assert len(topic.partitions) == 1
    resource = ConfigResource(ConfigResource.Type.TOPIC, control.topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["cleanup.policy"].value == "compact"


def test_a_rollout_step_by_step_then_promote(control: Control) -> None:
    control.ok("shadow", "fraud-deep:1")
    control.ok("canary", "fraud-deep:1", "--percent", "25", "--reason", "latency looks fine")
    raised = control.ok("canary", "fraud-deep:1", "--percent", "50")
    assert raised["canary"] == {"model": "fraud-deep:1", "percent": 50.0}
    assert raised["shadow"] == "fraud-deep:1"
    promoted = control.ok("promote")
    assert promoted["primary"] == "fraud-deep:1"
    assert (promoted["canary"], promoted["shadow"]) == (None, None)  # the shadow was the canary
    assert promoted["reason"] == "promote canary fraud-deep:1"
    assert control.ok("status") == promoted
    reasons = [json.loads(value or b"")["reason"] for _, value in control.records()]
    assert reasons == [
        "shadow fraud-deep:1", "latency looks fine", "canary fraud-deep:1 at 50%",
        "promote canary fraud-deep:1",
    ]  # fmt: skip


def test_streamscore_model_names_the_primary_only_while_no_plan_exists(control: Control) -> None:
    path = str(packaged_artifacts_dir() / "fraud-mlp" / "1")
    refused = control.run("canary", "fraud-deep:1", "--percent", "5", STREAMSCORE_MODEL=path)
    assert refused.returncode == 2
    assert "is a path, which a rollout plan cannot name" in refused.stderr
    assert not control.exists()
    first = control.ok("canary", "fraud-deep:1", "--percent", "5", STREAMSCORE_MODEL="fraud-lr")
    assert first["primary"] == "fraud-lr:1"  # STREAMSCORE_MODEL, pinned
    assert control.ok("status", STREAMSCORE_MODEL="fraud-mlp:1") == first
    switched = control.ok("primary", "fraud-mlp:1", STREAMSCORE_MODEL=path)
    assert (switched["primary"], switched["canary"]) == ("fraud-mlp:1", first["canary"])


def test_rollback_without_a_canary_fails_and_writes_nothing(control: Control) -> None:
    result = control.run("rollback")
    assert result.returncode == 1
    assert result.stderr == "streamscore: there is no canary to roll back\n"
    assert result.stdout == ""
    control.ok("canary", "fraud-lr:1", "--percent", "10")
    rolled = control.ok("rollback")
    assert (rolled["primary"], rolled["canary"]) == ("fraud-mlp:1", None)
    again = control.run("rollback")
    assert again.returncode == 1
    assert len(control.records()) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("canary", "fraud-nope:1", "--percent", "5"), "'fraud-nope:1' not found"),
        (("primary", "fraud-mlp:7"), "'fraud-mlp:7' not found"),
        (("shadow", "Not_A_Ref"), "is not a model reference"),
        (("primary", "./pipelines/fraud/artifacts/fraud-deep/1"), "is a path"),
        (("canary", "fraud-deep:1", "--percent", "0"), "--percent must be above 0"),
        (("canary", "fraud-deep:1", "--percent", "101"), "--percent must be above 0"),
        (("canary", "fraud-mlp:1", "--percent", "5"), "already the primary"),
    ],
)
def test_a_bad_reference_or_percent_exits_2_and_writes_nothing(
    control: Control, args: tuple[str, ...], message: str
) -> None:
    result = control.run(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.startswith("streamscore: ")
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""
    assert not control.exists() or control.records() == []


def test_a_registry_model_can_be_rolled_out(control: Control) -> None:
    artifact = renamed(control.registry.parent / "src", "fraud-deep", "2")
    added = subprocess.run(
        [*COMMAND, "models", "add", str(artifact)], env=control.env(), capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert added.stdout == "added fraud-deep:2\n", added.stderr
    plan = control.ok("canary", "fraud-deep", "--percent", "5")
    assert plan["canary"]["model"] == "fraud-deep:2"  # the highest version, pinned


def test_read_plan_does_not_stop_at_a_short_end_offset(control: Control) -> None:
    """Several plans in one record batch: the embedded broker reports the end too early."""
    settings = control.settings()
    assert read_plan(settings) is None
    write_plan(settings, _plan("first", 1.0))  # creates the compacted topic
    producer = Producer({"bootstrap.servers": control.bootstrap, "linger.ms": 200})
    for i in range(2, 12):
        producer.produce(control.topic, key=b"plan", value=_plan(f"plan {i}", i).to_bytes())
    producer.produce(control.topic, key=b"other", value=b"ignored: not the plan key")
    assert producer.flush(30) == 0
    assert read_plan(settings) == _plan("plan 11", 11)


def _plan(reason: str, ts: float) -> RolloutPlan:
    return RolloutPlan(
        primary="fraud-mlp:1", canary=Canary(model="fraud-deep:1", percent=ts), shadow=None,
        updated_ts=ts, reason=reason,
    )  # fmt: skip
