"""The steps of `streamscore rollout` as pure functions of the current plan."""

from __future__ import annotations

import pytest

from schemas.rollout import Canary, RolloutPlan
from streams.cli.common import EXIT_FAILED, EXIT_USAGE
from streams.cli.rollout import (
    RolloutError,
    implied_plan,
    promoted,
    rolled_back,
    with_canary,
    with_primary,
    with_shadow,
)

NOW = 1_763_769_600.0
BASE = RolloutPlan(
    primary="fraud-mlp:1",
    canary=Canary(model="fraud-deep:1", percent=5),
    shadow="fraud-lr:1",
    updated_ts=1.0,
    reason="earlier",
)


def test_implied_plan_is_streamscore_model_or_the_packaged_default() -> None:
    assert implied_plan(None).primary == "fraud-mlp:1"
    plan = implied_plan("fraud-lr:1")
    assert (plan.primary, plan.canary, plan.shadow) == ("fraud-lr:1", None, None)
    assert plan.updated_ts == 0.0
    assert "no plan written yet" in plan.reason


def test_implied_plan_refuses_a_path() -> None:
    with pytest.raises(RolloutError, match="is a path") as caught:
        implied_plan("/srv/models/fraud-mlp/1")
    assert caught.value.code == EXIT_USAGE


def test_primary_switches_at_once_and_keeps_other_roles() -> None:
    plan = with_primary(BASE, "fraud-mlp:2", "blue-green", NOW)
    assert plan == RolloutPlan(
        primary="fraud-mlp:2", canary=BASE.canary, shadow="fraud-lr:1", updated_ts=NOW,
        reason="blue-green",
    )  # fmt: skip


def test_primary_drops_a_canary_or_shadow_it_now_equals() -> None:
    to_canary = with_primary(BASE, "fraud-deep:1", "r", NOW)
    assert (to_canary.primary, to_canary.canary, to_canary.shadow) == (
        "fraud-deep:1", None, "fraud-lr:1"
    )  # fmt: skip
    to_shadow = with_primary(BASE, "fraud-lr:1", "r", NOW)
    assert (to_shadow.primary, to_shadow.canary, to_shadow.shadow) == (
        "fraud-lr:1", BASE.canary, None
    )  # fmt: skip


def test_comparison_can_see_through_bare_names() -> None:
    def same(a: str, b: str) -> bool:
        return a.partition(":")[0] == b.partition(":")[0]

    assert with_primary(BASE, "fraud-deep", "r", NOW, same).canary is None
    with pytest.raises(RolloutError, match="already the primary"):
        with_canary(BASE, "fraud-mlp", 10, "r", NOW, same)


def test_canary_sets_or_replaces_the_canary() -> None:
    plan = with_canary(BASE, "fraud-deep:1", 25, "canary fraud-deep:1 at 25%", NOW)
    assert plan.canary == Canary(model="fraud-deep:1", percent=25)
    assert (plan.primary, plan.shadow, plan.updated_ts) == ("fraud-mlp:1", "fraud-lr:1", NOW)
    other = with_canary(plan, "fraud-deep:2", 5, "r", NOW)
    assert other.canary == Canary(model="fraud-deep:2", percent=5)


def test_canary_equal_to_the_primary_is_a_usage_error() -> None:
    with pytest.raises(RolloutError, match="fraud-mlp:1 is already the primary") as caught:
        with_canary(BASE, "fraud-mlp:1", 5, "r", NOW)
    assert caught.value.code == EXIT_USAGE


def test_canary_percent_is_checked_by_the_schema() -> None:
    with pytest.raises(ValueError, match="percent"):
        with_canary(BASE, "fraud-deep:1", 0, "r", NOW)
    with pytest.raises(ValueError, match="percent"):
        with_canary(BASE, "fraud-deep:1", 100.5, "r", NOW)


def test_shadow_on_and_off() -> None:
    assert with_shadow(BASE, "fraud-deep:1", "r", NOW).shadow == "fraud-deep:1"
    off = with_shadow(BASE, None, "shadow off", NOW)
    assert (off.shadow, off.canary, off.reason) == (None, BASE.canary, "shadow off")
    with pytest.raises(RolloutError, match="already the primary"):
        with_shadow(BASE, "fraud-mlp:1", "r", NOW)


def test_promote_makes_the_canary_the_primary() -> None:
    plan = promoted(BASE, "promote", NOW)
    assert (plan.primary, plan.canary, plan.shadow) == ("fraud-deep:1", None, "fraud-lr:1")
    without = BASE.model_copy(update={"canary": None})
    with pytest.raises(RolloutError, match="no canary to promote") as caught:
        promoted(without, "promote", NOW)
    assert caught.value.code == EXIT_FAILED


def test_rollback_removes_the_canary_only() -> None:
    plan = rolled_back(BASE, "bad latency", NOW)
    assert (plan.primary, plan.canary, plan.shadow) == ("fraud-mlp:1", None, "fraud-lr:1")
    assert (plan.updated_ts, plan.reason) == (NOW, "bad latency")
    with pytest.raises(RolloutError, match="no canary to roll back"):
        rolled_back(plan, "again", NOW)
