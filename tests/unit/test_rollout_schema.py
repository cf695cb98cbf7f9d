"""The rollout plan on the wire: the contract's field names, and every bad shape refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.rollout import Canary, PlanError, RolloutPlan

VALID: dict[str, Any] = {
    "primary": "fraud-mlp:1",
    "canary": {"model": "fraud-deep:1", "percent": 5.0},
    "shadow": "fraud-lr:1",
    "updated_ts": 1_763_769_600.5,
    "reason": "canary fraud-deep:1 at 5%",
}


def _bytes(**changes: Any) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


def test_round_trip_keeps_the_contract_field_names() -> None:
    plan = RolloutPlan.from_bytes(_bytes())
    assert plan.canary == Canary(model="fraud-deep:1", percent=5.0)
    assert json.loads(plan.to_bytes()) == VALID
    assert RolloutPlan.from_bytes(plan.to_bytes()) == plan


def test_null_canary_and_shadow_and_bare_names() -> None:
    plan = RolloutPlan.from_bytes(_bytes(primary="fraud-mlp", canary=None, shadow=None))
    assert (plan.primary, plan.canary, plan.shadow) == ("fraud-mlp", None, None)
    assert json.loads(plan.to_bytes())["canary"] is None


def test_integer_json_numbers_are_numbers() -> None:
    plan = RolloutPlan.from_bytes(
        _bytes(canary={"model": "fraud-deep:1", "percent": 100}, updated_ts=1)
    )
    assert plan.canary is not None
    assert plan.canary.percent == 100.0
    assert plan.updated_ts == 1.0


def test_unknown_fields_are_ignored_for_newer_writers() -> None:
    assert RolloutPlan.from_bytes(_bytes(escalation={"model": "x"})) == RolloutPlan.from_bytes(
        _bytes()
    )


@pytest.mark.parametrize("percent", [0, -1, 100.0001, 1e9, "5", True])
def test_percent_out_of_bounds_or_not_a_number(percent: object) -> None:
    with pytest.raises(PlanError, match=r"canary\.percent"):
        RolloutPlan.from_bytes(_bytes(canary={"model": "fraud-deep:1", "percent": percent}))


@pytest.mark.parametrize("percent", [0.001, 50, 100])
def test_percent_bounds_accepted(percent: float) -> None:
    assert Canary(model="fraud-deep:1", percent=percent).percent == percent


def test_non_finite_percent_refused() -> None:
    with pytest.raises(ValidationError):
        Canary(model="fraud-deep:1", percent=float("nan"))
    with pytest.raises(PlanError, match="percent"):
        RolloutPlan.from_bytes(_bytes().replace(b"5.0", b"Infinity"))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"primary": "/srv/models/fraud-mlp/1"}, "primary"),  # a path, not a reference
        ({"primary": "Fraud-MLP"}, "primary"),
        ({"primary": "fraud-mlp:"}, "primary"),
        ({"primary": ""}, "primary"),
        ({"primary": None}, "primary"),
        ({"shadow": "fraud lr"}, "shadow"),
        ({"shadow": 1}, "shadow"),
        ({"canary": {"model": "fraud-deep:1"}}, "canary.percent"),
        ({"canary": {"percent": 5}}, "canary.model"),
        ({"canary": "fraud-deep:1"}, "canary"),
        ({"updated_ts": "1763769600"}, "updated_ts"),
        ({"updated_ts": -1}, "updated_ts"),
        ({"reason": None}, "reason"),
    ],
)
def test_bad_shapes_are_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(PlanError, match=rf"not a rollout plan: .*{field}"):
        RolloutPlan.from_bytes(_bytes(**changes))


@pytest.mark.parametrize("missing", sorted(VALID))
def test_every_field_is_required(missing: str) -> None:
    data = {k: v for k, v in VALID.items() if k != missing}
    with pytest.raises(PlanError, match=missing):
        RolloutPlan.from_bytes(json.dumps(data).encode())


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'"plan"', b"\xff\xfe", None])
def test_not_a_plan_at_all(data: bytes | None) -> None:
    with pytest.raises(PlanError) as caught:
        RolloutPlan.from_bytes(data)
    assert "\n" not in str(caught.value)


def test_the_plan_is_frozen() -> None:
    plan = RolloutPlan.from_bytes(_bytes())
    with pytest.raises(ValidationError):
        plan.primary = "fraud-lr:1"  # type: ignore[misc]
