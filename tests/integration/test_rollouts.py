"""Rollout plans followed by live workers: hot swap, canary, shadow, rollback, router."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from pipelines.fraud import pipeline as fraud
from pipelines.fraud.synthetic import SyntheticWorld
from schemas.rollout import Canary, RolloutPlan
from streams.harness import Output, WorkerProcess, metric_value
from streams.pipeline.models import add_model
from streams.rollout.control import read_plan, write_plan
from streams.scoring.cohorts import members
from streams.settings import Settings, load_settings
from tests.integration.conftest import PARTITIONS, Deployment, Published, event_record
from tests.integration.test_model_failures import POISON_AMOUNT, poisoned_artifact

pytestmark = pytest.mark.broker


def add_artifact(source: Path, registry: Path) -> str:
    """``models add`` of a fraud model."""
    return add_model(fraud, source, registry)


def control(deployment: Deployment) -> Settings:
    return load_settings(
        broker=f"kafka://{deployment.bootstrap}",
        control_topic=deployment.topics["control"],
        model_registry=deployment.registry,
    )


def plan(primary: str, *, canary: tuple[str, float] | None = None, shadow: str | None = None,
         reason: str = "test") -> RolloutPlan:  # fmt: skip
    return RolloutPlan(
        primary=primary,
        canary=Canary(model=canary[0], percent=canary[1]) if canary else None,
        shadow=shadow,
        updated_ts=time.time(),
        reason=reason,
    )


def models_view(worker: WorkerProcess) -> dict[str, Any]:
    status, body = worker.get("/models")
    assert status == 200, body
    return json.loads(body)


def wait_for(condition: Any, timeout: float, what: str) -> float:
    """Poll ``condition`` until true; return the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def records(seed: int, n: int, entities: int = 200) -> list[Published]:
    world = SyntheticWorld(seed=seed, n_entities=entities)
    return [event_record(item.event) for item in world.events(n)]


class Stream:
    """Publishes records in slices, a live stream the test changes plans under."""

    def __init__(self, deployment: Deployment, items: list[Published], per_slice: int = 30):
        self._thread = threading.Thread(
            target=self._run, args=(deployment, items, per_slice), daemon=True
        )
        self._stop = threading.Event()

    def _run(self, deployment: Deployment, items: list[Published], per_slice: int) -> None:
        producer = deployment.producer()
        for start in range(0, len(items), per_slice):
            if self._stop.is_set():
                return
            deployment.publish("events", items[start : start + per_slice], producer)
            self._stop.wait(0.1)  # a paced producer (about 300 events/s), not a synchronisation

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(120)


def test_plans_switch_live_without_loss_or_disorder_and_a_restart_resumes_the_plan(
    deployment: Deployment,
) -> None:
    settings = control(deployment)
    # fraud-lr scores differently enough from fraud-deep for the canary watch to roll it
    # back (see the rollback test); here the plan must stay as written.
    worker = deployment.worker(STREAMSCORE_AUTO_ROLLBACK="false")
    worker.wait_ready()
    view = models_view(worker)
    assert view["plan"] is None
    assert {"name": "fraud-mlp", "version": "1", "role": "primary", "device": "cpu"} in view[
        "models"
    ]
    items = records(seed=71, n=6000)
    ids = {orjson.loads(r.value)["event_id"] for r in items}  # type: ignore[arg-type]
    reader = deployment.reader()
    with Stream(deployment, items):
        reader.until(lambda o: len(o.scores) >= 800, 60)

        # 1. Blue-green: a new primary, applied within 5 s, readiness 200 throughout.
        write_plan(settings, plan("fraud-deep:1"))
        ready: list[int] = []

        def switched() -> bool:
            ready.append(worker.get("/health/ready")[0])
            primary = [m for m in models_view(worker)["models"] if m["role"] == "primary"]
            return primary[0]["name"] == "fraud-deep"

        took = wait_for(switched, 5.0, "the new primary applied")
        assert set(ready) == {200}
        reader.until(lambda o: any(v["model"] == "fraud-deep" for _, v in o.scores), 30)

        # 2. A canary at 30%, then 60% (scores are told apart by when they were made).
        def canary_window(percent: float) -> tuple[float, float]:
            """Apply a canary at ``percent``; the time span of 1,500 scores made under it."""
            write_plan(settings, plan("fraud-deep:1", canary=("fraud-lr:1", percent)))
            wait_for(
                lambda: models_view(worker)["canary_percent"] == percent, 5.0,
                f"canary at {percent:g}%",
            )  # fmt: skip
            start = time.time() + 0.5
            seen = len(reader.output.scores)
            reader.until(lambda o: len(o.scores) >= seen + 1500, 60)
            return start, time.time()

        window_30 = canary_window(30.0)
        window_60 = canary_window(60.0)

        # 3. A plan naming a model this worker cannot load: refused, the worker stays put.
        write_plan(settings, plan("no-such-model:1"))
        wait_for(lambda: models_view(worker)["rejected"] is not None, 5.0, "plan refused")
        view = models_view(worker)
        assert "no-such-model" in view["rejected"]["error"]
        assert view["plan"]["primary"] == "fraud-deep:1"
        assert worker.get("/health/ready")[0] == 200
        write_plan(settings, plan("fraud-deep:1", canary=("fraud-lr:1", 60.0), reason="back"))

    out = reader.until(lambda o: o.scored_ids() >= ids, 120)
    assert out.scored_ids() == ids  # nothing lost
    assert not out.dead
    assert out.first_scores_in_order()  # nothing reordered by the switches
    assert took <= 5.0
    metrics = worker.metrics()
    assert metric_value(metrics, "streamscore_plans_rejected_total") == 1

    # Every partition switches primary once, at a batch boundary: mlp, then deep, never back.
    by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for _, value in out.scores:
        if value.get("route") == "primary":
            by_partition[value["source"]["partition"]].append(
                (value["source"]["offset"], value["model"])
            )
    for rows in by_partition.values():
        names = [name for _, name in sorted(rows)]
        switches = sum(1 for a, b in itertools.pairwise(names) if a != b)
        assert switches <= 1, names
        assert names[-1] == "fraud-deep"

    # The canary: exactly the entities whose bucket is under the percentage, all their
    # events (sticky), about that share of them, and raising it only adds entities.
    for percent, (start, end) in ((30.0, window_30), (60.0, window_60)):
        scored = [v for _, v in out.scores if start <= v["scored_ts"] <= end]
        entities = sorted({v["entity_id"] for v in scored})
        chosen = {e for e, m in zip(entities, members(entities, percent), strict=True) if m}
        canaried = {v["entity_id"] for v in scored if v.get("route") == "canary"}
        on_primary = {v["entity_id"] for v in scored if v.get("route") == "primary"}
        odd = [
            (v["entity_id"], v.get("route"), v["model"], v["scored_ts"] - start)
            for v in scored
            if v["entity_id"] in canaried ^ chosen
        ]
        assert canaried == chosen, (percent, odd[:10])
        assert not (on_primary & chosen)
        assert {v["model"] for v in scored if v.get("route") == "canary"} == {"fraud-lr"}
        share = len(chosen) / len(entities)
        assert abs(share - percent / 100) < 0.12, (percent, share)
    every = sorted({v["entity_id"] for _, v in out.scores})
    assert not (members(every, 30.0) & ~members(every, 60.0)).any()
    reader.close()

    # A restarted worker resumes the plan before it scores anything.
    assert worker.terminate() == 0
    again = deployment.worker("w2")
    again.wait_ready()
    view = models_view(again)
    assert view["plan"]["primary"] == "fraud-deep:1"
    assert view["plan"]["canary"] == {"model": "fraud-lr:1", "percent": 60.0}
    assert view["plan"]["reason"] == "back"
    # It follows the topic from where it read the plan: once it applies a plan written
    # now, it has read everything before it, and older plans (the refused one included)
    # were not applied again.
    write_plan(settings, plan("fraud-deep:1", canary=("fraud-lr:1", 60.0), reason="after"))
    wait_for(lambda: models_view(again)["plan"]["reason"] == "after", 5.0, "a new plan")
    metrics = again.metrics()
    assert metric_value(metrics, "streamscore_plans_rejected_total") == 0
    assert metric_value(metrics, "streamscore_plans_applied_total") == 2


def read_topic(bootstrap: str, topic: str, until: int, timeout: float) -> list[dict[str, Any]]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"t-{time.monotonic_ns()}",
         "fetch.wait.max.ms": 10}
    )  # fmt: skip
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    values: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(values) < until and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.2):
            error = message.error()
            if error is None:
                values.append(orjson.loads(message.value()))
            elif error.code() != KafkaError._PARTITION_EOF:
                raise AssertionError(error.str())
    consumer.close()
    return values


def shadowed_worker(deployment: Deployment, **env: str) -> WorkerProcess:
    """A worker started after a plan with the shadow ``fraud-deep:1`` was written."""
    write_plan(control(deployment), plan("fraud-mlp:1", shadow="fraud-deep:1"))
    worker = deployment.worker(**env)
    worker.wait_ready()
    return worker


def score_all(deployment: Deployment, items: list[Published]) -> tuple[set[str], Output]:
    """Publish ``items`` and read outputs until every one of them is scored (or 60 s)."""
    ids = {orjson.loads(r.value)["event_id"] for r in items}  # type: ignore[arg-type]
    deployment.publish("events", items)
    reader = deployment.reader()
    out = reader.until(lambda o: o.scored_ids() >= ids, 60)
    reader.close()
    return ids, out


def test_a_shadow_scores_to_its_own_topic_only_and_a_starting_worker_reads_the_plan_first(
    deployment: Deployment,
) -> None:
    worker = shadowed_worker(deployment)
    assert models_view(worker)["plan"]["shadow"] == "fraud-deep:1"
    ids, out = score_all(deployment, records(seed=72, n=1500))
    assert out.scored_ids() == ids
    assert {(v["model"], v.get("route")) for _, v in out.scores} == {("fraud-mlp", "primary")}
    shadow = read_topic(deployment.bootstrap, deployment.topics["shadow"], len(ids), 30)
    metrics = worker.settled_metrics()
    shed = metric_value(metrics, "streamscore_shadow_shed_total", {"reason": "overload"})
    assert len(shadow) + shed == len(ids)
    assert len(shadow) >= len(ids) // 2  # at this load the shadow keeps up
    assert {(v["model"], v["route"], v["degraded"]) for v in shadow} == {
        ("fraud-deep", "shadow", False)
    }
    assert {v["event_id"] for v in shadow} <= ids
    assert metric_value(metrics, "streamscore_shadow_abs_diff_count") == len(shadow)
    primary = {v["event_id"]: v["score"] for _, v in out.scores}
    assert any(abs(v["score"] - primary[v["event_id"]]) > 1e-6 for v in shadow)
    assert metric_value(
        metrics, "streamscore_scores_total",
        {"model": "fraud-deep", "version": "1", "route": "shadow"},
    ) == len(shadow)  # fmt: skip


def test_a_bad_canary_is_rolled_back_automatically_and_nothing_is_lost(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.registry.mkdir(parents=True, exist_ok=True)
    assert add_artifact(poisoned_artifact(tmp_path / "poisoned"), deployment.registry) == (
        "poisoned:1"
    )
    settings = control(deployment)
    write_plan(settings, plan("fraud-mlp:1", canary=("poisoned:1", 50.0)))
    worker = deployment.worker(
        STREAMSCORE_CANARY_MIN_EVENTS="50",
        STREAMSCORE_CANARY_MAX_SCORE_SHIFT="1.0",  # the error rate is what this test trips
    )
    worker.wait_ready()
    items = []
    for i, record in enumerate(records(seed=73, n=3000)):
        event = orjson.loads(record.value)  # type: ignore[arg-type]
        if i % 10 == 3:
            event["amount"] = POISON_AMOUNT  # the canary answers NaN for these
        items.append(event_record(event))
    ids = {orjson.loads(r.value)["event_id"] for r in items}  # type: ignore[arg-type]
    reader = deployment.reader()
    with Stream(deployment, items):
        wait_for(
            lambda: metric_value(
                worker.metrics(), "streamscore_rollbacks_total", {"reason": "error_rate"}
            ) == 1,
            60, "an automatic rollback",
        )  # fmt: skip
    written = read_plan(settings)
    assert written is not None
    assert written.canary is None
    assert written.primary == "fraud-mlp:1"
    assert written.reason.startswith("automatic rollback of canary poisoned:1: canary failed")
    wait_for(lambda: models_view(worker)["plan"]["canary"] is None, 5.0, "rollback applied")
    out = reader.until(lambda o: o.scored_ids() >= ids, 120)
    reader.close()
    assert out.scored_ids() == ids
    assert not out.dead  # what the canary could not score, the primary did
    assert out.first_scores_in_order()
    canary = [v for _, v in out.scores if v.get("route") == "canary"]
    assert canary
    assert all(v["model"] == "poisoned" for v in canary)
    assert all(v["score"] == 0.5 for v in canary)
    last = max(out.scores, key=lambda mv: mv[1]["scored_ts"])
    assert last[1].get("route") == "primary"


def test_rules_and_escalation_route_events_and_say_so(deployment: Deployment) -> None:
    worker = deployment.worker(
        STREAMSCORE_ROUTING_RULES='[{"model": "fraud-lr:1", "where": {"channel": "pos"}}]',
        STREAMSCORE_ESCALATION_MODEL="fraud-deep:1",
        STREAMSCORE_ESCALATION_BAND_LOW="0.02",
        STREAMSCORE_ESCALATION_BAND_HIGH="0.6",
    )
    worker.wait_ready()
    roles = {(m["name"], m["role"]) for m in models_view(worker)["models"]}
    assert {("fraud-mlp", "primary"), ("fraud-deep", "escalation"), ("fraud-lr", "rule")} <= roles
    items = records(seed=74, n=2000)
    events = {orjson.loads(r.value)["event_id"]: orjson.loads(r.value) for r in items}  # type: ignore[arg-type]
    deployment.publish("events", items)
    reader = deployment.reader()
    out = reader.until(lambda o: o.scored_ids() >= set(events), 60)
    reader.close()
    assert out.scored_ids() == set(events)
    assert out.first_scores_in_order()
    routes: dict[str, int] = defaultdict(int)
    for _, value in out.scores:
        event = events[value["event_id"]]
        route = value.get("route")
        routes[route] += 1
        if route == "escalated":
            assert value["model"] == "fraud-deep"
        else:
            assert route == "primary"
            assert not 0.02 <= value["score"] <= 0.6  # in the band it would have been escalated
            expected = "fraud-lr" if event["channel"] == "pos" else "fraud-mlp"
            assert value["model"] == expected
    assert routes["escalated"] > 0
    assert routes["primary"] > 0
    metrics = worker.settled_metrics()
    assert metric_value(
        metrics, "streamscore_scores_total",
        {"model": "fraud-deep", "version": "1", "route": "escalated"},
    ) == routes["escalated"]  # fmt: skip
    assert metric_value(
        metrics, "streamscore_model_compute_seconds_total",
        {"model": "fraud-deep", "version": "1", "device": "cpu"},
    ) > 0  # fmt: skip


def test_shadow_work_over_its_budget_is_shed_and_counted_never_the_scores(
    deployment: Deployment,
) -> None:
    # A budget of one event: every batch of the shadow is over it.
    worker = shadowed_worker(deployment, STREAMSCORE_SHADOW_MAX_PENDING="1")
    ids, out = score_all(deployment, records(seed=75, n=800))
    assert out.scored_ids() == ids
    metrics = worker.settled_metrics()
    shed = metric_value(metrics, "streamscore_shadow_shed_total", {"reason": "overload"})
    try:  # the series exists once a shadow score was made
        single = metric_value(
            metrics, "streamscore_scores_total",
            {"model": "fraud-deep", "version": "1", "route": "shadow"},
        )  # fmt: skip
    except KeyError:
        single = 0.0
    assert shed + single == len(ids)
    assert shed >= len(ids) - 50  # only batches of a single event fit the budget
    shadow = read_topic(deployment.bootstrap, deployment.topics["shadow"], int(single), 10)
    assert len(shadow) == single
