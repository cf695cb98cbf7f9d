"""Routing rules: their conditions, matched on columns, and checked against the event."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipelines.fraud.events import Event
from pipelines.purchases import Purchase
from schemas.rollout import RoutingRule
from streams.errors import ConfigError
from streams.scoring.rules import check_rules, first_match


def rule(model: str, **where: object) -> RoutingRule:
    return RoutingRule.model_validate({"model": model, "where": where})


def test_values_lists_and_bounds_match_on_whole_columns() -> None:
    events = [
        {"channel": "pos", "amount": 5000.0},
        {"channel": "web", "amount": 5000.0},
        {"channel": "pos", "amount": 999.0},
        {"channel": "app", "amount": 1000.0},
        {"channel": "app", "amount": None},  # an absent number meets no bound
    ]
    rules = [
        rule("deep", channel="pos", amount={"gte": 1000}),
        rule("apps", channel=["app", "kiosk"], amount={"gt": 10, "lte": 1000}),
        rule("small", amount={"lt": 1000}),
    ]
    assert first_match(rules, events).tolist() == [0, -1, 2, 1, -1]


def test_the_first_matching_rule_wins_and_objects_are_read_by_attribute() -> None:
    events = [
        Purchase(customer="1", purchase_id="a", ts=0.0, cds=3, dollars=40.0),
        Purchase(customer="2", purchase_id="b", ts=0.0, cds=1, dollars=400.0),
    ]
    rules = [rule("big", dollars={"gte": 100}), rule("any", cds={"gte": 0})]
    assert first_match(rules, events).tolist() == [1, 0]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({}, "at least 1 item"),
        ({"amount": {}}, "a condition needs eq, in, gte, gt, lte or lt"),
        ({"amount": {"eq": 1, "in": [1]}}, "give eq or in, not both"),
        ({"channel": []}, "in: an empty list matches nothing"),
        ({"amount": {"above": 3}}, "Extra inputs are not permitted"),
        ({"amount": {"gte": "a lot"}}, "valid number"),
    ],
)
def test_a_malformed_rule_is_refused_with_the_reason(
    where: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        RoutingRule.model_validate({"model": "deep", "where": where})


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"amout": {"gte": 1}}, "'amout' is not a field of pipeline 'fraud''s event"),
        ({"merchant": {"gte": 1}}, "'merchant' is not a number; it cannot have bounds"),
        ({"channel": ["pos", "kiosk"]}, "'channel' can never be 'kiosk'"),
        ({"currency": "usd"}, "'currency' can never be 'usd'"),
    ],
)
def test_a_rule_the_event_cannot_meet_is_refused_at_start(
    where: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check_rules([rule("deep", **where)], Event, "fraud")


def test_constraints_of_a_declared_field_count_too() -> None:
    with pytest.raises(ConfigError, match="'cds' can never be -1"):
        check_rules([rule("deep", cds=[-1, 2])], Purchase, "purchases")
    check_rules([rule("deep", cds=[1, 2], dollars={"gte": 100})], Purchase, "purchases")
