"""A model that fails for some events: only those are dead-lettered, the rest scored in order."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import torch

from models.registry import resolve
from pipelines.fraud.artifact import load_artifact, save_artifact
from pipelines.fraud.model import FraudMLP
from schemas import deadletter
from streams.harness import metric_value
from tests.integration.conftest import Deployment, event_record
from tests.nan_model import nan_artifact

POISON_AMOUNT = 50_000.0


def poisoned_artifact(directory: Path) -> Path:
    """Same inputs as the default model, but NaN whenever the amount is huge.

    Two hidden units both grow as 1e38 x amount; the output subtracts one from
    the other. For ordinary amounts that is 0 (score 0.5); for huge ones both
    overflow to infinity and inf - inf is NaN: a real artifact, no test hooks.
    """
    spec = load_artifact(resolve(None)).preprocessor.spec
    module = FraudMLP(spec.width, hidden=(2,))
    amount = spec.columns().index("amount_log")
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.zero_()
        module.net[0].weight[:, amount] = 1e38
        module.net[2].weight[0] = torch.tensor([1.0, -1.0])
    return save_artifact(
        directory, name="poisoned", version="1", model=module, spec=spec, metrics={"auc": 0.5}
    )


@pytest.mark.broker
def test_poison_events_are_isolated_and_their_batch_neighbours_scored(
    deployment: Deployment, tmp_path: Path
) -> None:
    artifact = poisoned_artifact(tmp_path / "poisoned")
    worker = deployment.worker(STREAMSCORE_MODEL=str(artifact), STREAMSCORE_MAX_BATCH_SIZE="64")
    worker.wait_ready()
    events = []
    for i in range(600):
        amount = POISON_AMOUNT if i % 97 == 13 else 20.0
        events.append({
            "event_id": f"e-{i}", "entity_id": f"acct-{i % 40}", "ts": 1_763_769_600.0 + i,
            "amount": amount, "currency": "EUR", "merchant": "m-1", "country": "DE",
            "channel": "web",
        })  # fmt: skip
    poison = {e["event_id"] for e in events if e["amount"] == POISON_AMOUNT}
    published = deployment.publish("events", [event_record(e) for e in events])

    reader = deployment.reader()
    out = reader.until(lambda o: len(o.scores) + len(o.dead) >= len(events), 60)
    reader.close()

    assert {v["event_id"] for _, v in out.scores} == {e["event_id"] for e in events} - poison
    assert all(v["score"] == 0.5 and v["model"] == "poisoned" for _, v in out.scores)
    dead_ids = set()
    for message in out.dead:
        headers = dict(message.headers() or [])
        assert headers[deadletter.STAGE] == b"model"
        assert headers[deadletter.ERROR_CLASS] == b"NonFiniteScore"
        dead_ids.add(orjson.loads(message.value())["event_id"])
    assert dead_ids == poison
    offsets: dict[bytes, list[int]] = defaultdict(list)
    for message, value in out.scores:
        offsets[message.key()].append(value["source"]["offset"])
    assert all(o == sorted(o) for o in offsets.values())
    metrics = worker.settled_metrics()
    assert metric_value(metrics, "streamscore_dlq_total", {"stage": "model"}) == len(poison)
    assert metric_value(metrics, "streamscore_events_total", {"outcome": "dlq"}) == len(poison)
    assert len(published) == 600


def plain_events(n: int, prefix: str) -> list[dict[str, object]]:
    return [
        {"event_id": f"{prefix}-{i}", "entity_id": f"acct-{i % 30}", "ts": 1_763_769_600.0 + i,
         "amount": 20.0 + i % 7, "currency": "EUR", "merchant": "m-1", "country": "DE",
         "channel": "pos"}
        for i in range(n)
    ]  # fmt: skip


@pytest.mark.broker
def test_a_broken_primary_opens_the_breaker_and_the_fallback_scores_degraded(
    deployment: Deployment, tmp_path: Path
) -> None:
    worker = deployment.worker(
        STREAMSCORE_MODEL=str(nan_artifact(tmp_path / "broken", "broken")),
        STREAMSCORE_BREAKER_FAILURES="2",
        STREAMSCORE_BREAKER_COOLDOWN_MS="600000",
    )
    worker.wait_ready()
    events = plain_events(800, "b")
    deployment.publish("events", [event_record(e) for e in events])
    reader = deployment.reader()
    out = reader.until(lambda o: len(o.scores) + len(o.dead) >= len(events), 60)
    reader.close()

    assert len(out.scores) + len(out.dead) == len(events)
    assert len(out.scores) >= len(events) - 2  # at most lone events before the breaker opened
    for _, score in out.scores:
        assert (score["model"], score["route"], score["degraded"]) == ("fraud-lr", "fallback", True)
        assert 0.0 <= score["score"] <= 1.0
    metrics = worker.settled_metrics()
    assert metric_value(metrics, "streamscore_events_total", {"outcome": "degraded"}) == len(
        out.scores
    )
    assert metric_value(metrics, "streamscore_breaker_open") == 1
    assert metric_value(
        metrics, "streamscore_scores_total", {"model": "fraud-lr", "route": "fallback"}
    ) == len(out.scores)
    status, body = worker.get("/health/ready")
    assert status == 503
    assert b"circuit breaker open" in body


@pytest.mark.broker
def test_without_a_fallback_the_default_score_and_late_events_skip_the_primary(
    deployment: Deployment,
) -> None:
    worker = deployment.worker(
        STREAMSCORE_FALLBACK_MODEL="",
        STREAMSCORE_DEFAULT_SCORE="0.3",
        STREAMSCORE_DEADLINE_MS="5000",
    )
    worker.wait_ready()
    fresh, stale = plain_events(300, "fresh"), plain_events(200, "stale")
    late_ms = int((time.time() - 60) * 1000)  # a minute old: past the 5 s deadline
    producer = deployment.producer()
    for event in stale:
        producer.produce(deployment.topics["events"], key=str(event["entity_id"]).encode(),
                         value=orjson.dumps(event), timestamp=late_ms)  # fmt: skip
    producer.flush()
    deployment.publish("events", [event_record(e) for e in fresh])
    reader = deployment.reader()
    out = reader.until(lambda o: len(o.scores) >= len(fresh) + len(stale), 60)
    reader.close()

    routes = {value["event_id"]: value for _, value in out.scores}
    assert len(routes) == len(fresh) + len(stale)
    for event in stale:
        score = routes[str(event["event_id"])]
        assert (score["route"], score["model"], score["score"]) == ("default", "default", 0.3)
        assert score["degraded"] is True
    for event in fresh:
        assert routes[str(event["event_id"])]["route"] == "primary"
    metrics = worker.settled_metrics()
    assert metric_value(metrics, "streamscore_deadline_missed_total") == len(stale)
    assert metric_value(metrics, "streamscore_events_total", {"outcome": "degraded"}) == len(stale)
    assert metric_value(metrics, "streamscore_breaker_open") == 0
