"""The router with fake models: rules, canary by entity, leftovers to the primary, escalation."""

from __future__ import annotations

import numpy as np

from schemas.rollout import RoutingRule
from streams.rollout.canary import CanaryMonitor, Thresholds
from streams.scoring.cohorts import members
from streams.scoring.inference import Inference
from streams.scoring.ladder import Breaker, Ladder, Route
from streams.scoring.router import Deployment, route_batch
from tests.unit.streams.test_ladder import POISON, FakeModel, now_times, raw_of


class Scaled(FakeModel):
    """Scores ``value / 1000 * factor`` (clipped to 1); poison rows raise as in FakeModel."""

    def __init__(self, name: str, factor: float) -> None:
        super().__init__(name)
        self.factor = factor

    def predict(self, raw):  # type: ignore[no-untyped-def]
        return np.minimum(super().predict(raw) * self.factor, 1.0).astype(np.float32)


def inference(model: FakeModel) -> Inference:
    return Inference(model)  # type: ignore[arg-type]


def ladder_of(primary: FakeModel) -> Ladder:
    return Ladder(
        inference(primary), inference(FakeModel("lighter")), default_score=0.5, timeout=1.0,
        deadline=None, breaker=Breaker(failures=3, cooldown=10.0),
    )  # fmt: skip


def events(n: int, **fields: object) -> list[dict[str, object]]:
    base = {"amount": 10.0, "channel": "web", "country": "DE", "currency": "EUR"}
    return [{**base, **fields, "entity_id": f"acct-{i}"} for i in range(n)]  # type: ignore[misc]


async def route(dep, raw, times, evs):  # type: ignore[no-untyped-def]
    """The router as the agent calls it: entities for the canary, events for the rules."""
    entities = None if evs is None else [e["entity_id"] for e in evs]
    return await route_batch(dep, raw, times, entities, evs)


async def test_without_sides_the_ladder_scores_everything() -> None:
    primary = FakeModel("primary")
    dep = Deployment(plan=None, ladder=ladder_of(primary))
    outcome = await route(dep, raw_of([100.0, 200.0]), now_times(2), None)
    assert outcome.route.tolist() == [Route.PRIMARY, Route.PRIMARY]
    assert outcome.models[Route.PRIMARY].model is primary  # type: ignore[union-attr]


async def test_canary_takes_its_entities_and_the_primary_the_rest() -> None:
    primary, canary = FakeModel("primary"), Scaled("canary", 2.0)
    monitor = CanaryMonitor(Thresholds(min_events=1, max_latency_ratio=1000.0))
    dep = Deployment(
        plan=None, ladder=ladder_of(primary), canary=inference(canary), canary_percent=30.0,
        monitor=monitor,
    )  # fmt: skip
    n = 400
    evs = events(n)
    outcome = await route(dep, raw_of([100.0] * n), now_times(n), evs)  # type: ignore[arg-type]
    expected = members([e["entity_id"] for e in evs], 30.0)  # type: ignore[misc]
    assert np.array_equal(outcome.route == Route.CANARY, expected)
    assert np.array_equal(outcome.route == Route.PRIMARY, ~expected)
    assert np.allclose(outcome.scores[expected], 0.2)
    assert np.allclose(outcome.scores[~expected], 0.1)
    assert outcome.models[Route.CANARY].model is canary  # type: ignore[union-attr]
    breach = monitor.breach()  # both sides were observed: 0.2 against 0.1 is a shift
    assert breach is not None
    assert breach.reason == "score_distribution"


async def test_what_the_canary_cannot_score_goes_to_the_primary_and_is_counted() -> None:
    primary, canary = FakeModel("primary"), FakeModel("canary")
    canary.broken = True
    monitor = CanaryMonitor(Thresholds(min_events=10, max_error_rate=0.01))
    dep = Deployment(
        plan=None, ladder=ladder_of(primary), canary=inference(canary), canary_percent=100.0,
        monitor=monitor,
    )  # fmt: skip
    n = 20
    outcome = await route(dep, raw_of([100.0] * n), now_times(n), events(n))  # type: ignore[arg-type]
    assert outcome.route.tolist() == [Route.PRIMARY] * n  # no dead letter, no degraded score
    assert not outcome.failures
    # The primary saw no traffic of its own: nothing to compare with yet.
    assert monitor.breach() is None
    dep2 = Deployment(
        plan=None, ladder=ladder_of(primary), canary=inference(canary), canary_percent=50.0,
        monitor=monitor,
    )  # fmt: skip
    n = 200
    await route(dep2, raw_of([100.0] * n), now_times(n), events(n))  # type: ignore[arg-type]
    breach = monitor.breach()
    assert breach is not None
    assert breach.reason == "error_rate"


async def test_a_poison_event_for_the_canary_is_scored_by_the_primary() -> None:
    primary, canary = FakeModel("primary"), Scaled("canary", 1.0)
    dep = Deployment(
        plan=None, ladder=ladder_of(primary), canary=inference(canary), canary_percent=100.0
    )
    outcome = await route(
        dep,
        raw_of([100.0, POISON, 300.0]),
        now_times(3),
        events(3),  # type: ignore[arg-type]
    )
    # The primary fails for the poison event too: only then is it a dead letter.
    assert outcome.route.tolist() == [Route.CANARY, Route.FAILED, Route.CANARY]
    assert isinstance(outcome.failures[1], ValueError)


async def test_rules_route_matching_events_first() -> None:
    primary, deep = FakeModel("primary"), Scaled("deep", 3.0)
    rule = RoutingRule.model_validate(
        {"model": "deep", "where": {"amount": {"gte": 1000}, "channel": ["pos"]}}
    )
    dep = Deployment(plan=None, ladder=ladder_of(primary), rules=((rule, inference(deep)),))
    evs = events(4)
    evs[1].update(amount=5000.0, channel="pos")
    evs[2].update(amount=5000.0, channel="web")  # wrong channel
    evs[3].update(amount=999.0, channel="pos")  # below the amount
    outcome = await route(dep, raw_of([100.0] * 4), now_times(4), evs)  # type: ignore[arg-type]
    assert outcome.route.tolist() == [Route.PRIMARY, Route.RULES, Route.PRIMARY, Route.PRIMARY]
    assert np.isclose(outcome.scores[1], 0.3)
    assert outcome.models[Route.RULES].model is deep  # type: ignore[union-attr]


async def test_scores_in_the_band_are_escalated_as_one_batch() -> None:
    primary, deep = FakeModel("primary"), Scaled("deep", 0.5)
    dep = Deployment(
        plan=None, ladder=ladder_of(primary), escalation=inference(deep), band=(0.3, 0.7)
    )
    outcome = await route(dep, raw_of([100.0, 300.0, 500.0, 700.0, 900.0]), now_times(5), None)
    assert outcome.route.tolist() == [
        Route.PRIMARY, Route.ESCALATED, Route.ESCALATED, Route.ESCALATED, Route.PRIMARY,
    ]  # fmt: skip
    assert np.allclose(outcome.scores, [0.1, 0.15, 0.25, 0.35, 0.9])
    assert deep.calls == 1  # one batch
    assert outcome.models[Route.ESCALATED].model is deep  # type: ignore[union-attr]


async def test_a_failing_escalation_keeps_the_first_scores() -> None:
    primary, deep = FakeModel("primary"), FakeModel("deep")
    deep.broken = True
    dep = Deployment(
        plan=None, ladder=ladder_of(primary), escalation=inference(deep), band=(0.3, 0.7)
    )
    outcome = await route(dep, raw_of([100.0, 500.0]), now_times(2), None)
    assert outcome.route.tolist() == [Route.PRIMARY, Route.PRIMARY]
    assert np.allclose(outcome.scores, [0.1, 0.5])
    assert outcome.escalation_failures == 1
