"""Wire schemas: every malformed shape is refused; the bulk TypedDict agrees with the model."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipelines.fraud import pipeline as fraud
from pipelines.fraud.events import Event
from schemas.deadletter import MAX_MESSAGE_BYTES, dead_letter_headers, truncate_utf8
from schemas.profiles import FeatureUpdate
from schemas.scores import Score, ScoreBatch, ScoreEncoder
from streams.pipeline.events import Invalid

GOOD: dict[str, Any] = {
    "event_id": "e-000123", "entity_id": "acct-42", "ts": 1763769600.125, "amount": 129.90,
    "currency": "EUR", "merchant": "m-981", "country": "DE", "channel": "web",
}  # fmt: skip


def test_the_contract_example_is_valid_and_extra_fields_are_ignored() -> None:
    event = Event.model_validate({**GOOD, "extra": [1, 2]})
    assert event.model_dump() == GOOD
    assert Event.model_validate({**GOOD, "ts": 1763769600, "amount": 0}).amount == 0.0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event_id": ""}, "event_id"),
        ({"event_id": 123}, "event_id"),
        ({"entity_id": ""}, "entity_id"),
        ({"entity_id": None}, "entity_id"),
        ({"ts": "1763769600"}, "ts"),
        ({"ts": True}, "ts"),
        ({"ts": math.inf}, "ts"),
        ({"ts": math.nan}, "ts"),
        ({"amount": -0.01}, "amount"),
        ({"amount": "12.5"}, "amount"),
        ({"amount": math.inf}, "amount"),
        ({"currency": "eur"}, "currency"),
        ({"currency": "EURO"}, "currency"),
        ({"currency": "EU"}, "currency"),
        ({"currency": "EUR\n"}, "currency"),
        ({"country": "de"}, "country"),
        ({"country": "DEU"}, "country"),
        ({"country": 49}, "country"),
        ({"channel": "phone"}, "channel"),
        ({"channel": "WEB"}, "channel"),
        ({"merchant": ""}, "merchant"),
        ({"merchant": ["m"]}, "merchant"),
    ],
)
def test_malformed_fields_are_refused(change: dict[str, Any], field: str) -> None:
    record = {**GOOD, **change}
    with pytest.raises(ValidationError) as raised:
        Event.model_validate(record)
    assert raised.value.errors()[0]["loc"][0] == field
    assert isinstance(fraud.schema.validate(None, json.dumps(record).encode()), Invalid)


@pytest.mark.parametrize("missing", sorted(GOOD))
def test_every_field_is_required(missing: str) -> None:
    record = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(ValidationError):
        Event.model_validate(record)


values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.sampled_from(["EUR", "DE", "web", "pos", "app", "e-1", "a"]),
    st.lists(st.integers(), max_size=2),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GOOD)), values, max_size=8), st.booleans())
def test_the_intakes_validation_accepts_and_refuses_exactly_what_the_model_does(
    changes: dict[str, Any], start_good: bool
) -> None:
    record = {**GOOD, **changes} if start_good else changes
    try:
        expected = Event.model_validate(record).model_dump()
    except ValidationError:
        expected = None
    event = fraud.schema.validate(None, json.dumps(record).encode())
    got = None if isinstance(event, Invalid) else {k: getattr(event, k) for k in Event.model_fields}
    assert got == expected


def test_feature_updates_hold_numbers_or_null_only() -> None:
    update = FeatureUpdate.model_validate_json(
        b'{"entity_id": "acct-42", "account_age_days": 812, "chargeback_rate": 0.01,'
        b' "avg_amount_30d": null}'
    )
    assert update.features() == {"account_age_days": 812.0, "chargeback_rate": 0.01}
    for bad in (
        {"entity_id": "a", "x": "1"},
        {"entity_id": "a", "x": True},
        {"entity_id": "a", "x": [1]},
        {"entity_id": "a", "x": math.inf},
        {"entity_id": ""},
        {"x": 1},
    ):
        with pytest.raises(ValidationError):
            FeatureUpdate.model_validate(bad)


def test_score_schema_bounds() -> None:
    score = {
        "event_id": "e", "entity_id": "a", "score": 0.5, "model": "fraud-mlp",
        "model_version": "1", "degraded": False, "event_ts": 1.0, "scored_ts": 2.0,
        "source": {"topic": "events", "partition": 0, "offset": 7},
    }  # fmt: skip
    assert Score.model_validate_json(orjson.dumps(score)).route is None
    for bad in ({"score": 1.01}, {"score": -0.1}, {"source": {"topic": "e", "partition": -1,
                                                            "offset": 0}}):  # fmt: skip
        with pytest.raises(ValidationError):
            Score.model_validate({**score, **bad})


_finite = st.floats(allow_nan=False, allow_infinity=False)


_SCORE_ROWS = st.lists(
    st.tuples(
        st.text(min_size=1) | st.just('},{"event_id":"x"'),  # event_id; the cut's own bytes too
        st.text(min_size=1),  # entity_id
        st.floats(min_value=0.0, max_value=1.0),  # score
        _finite | st.integers(-(2**53), 2**53),  # event_ts
        _finite,  # scored_ts
        st.text(min_size=1),  # model
        st.sampled_from(["primary", "canary", "escalated", "fallback", "default", "shadow"]),
        st.text(min_size=1),  # topic
        st.integers(0, 2**31 - 1),  # partition
        st.integers(0, 2**63 - 1),  # offset
    ),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(rows=_SCORE_ROWS)
def test_a_score_batch_writes_what_the_schema_would_for_each_score(
    rows: list[tuple[str, str, float, float, float, str, str, str, int, int]],
) -> None:
    batch = ScoreBatch()
    expected = []
    for event_id, entity_id, score, event_ts, scored_ts, model, route, topic, part, off in rows:
        encoder = ScoreEncoder(model, "1%s", route != "primary", route)
        batch.add(encoder, event_id, entity_id, score, event_ts, scored_ts, topic, part, off)
        expected.append(
            Score(
                event_id=event_id, entity_id=entity_id, score=score, model=model,
                model_version="1%s", degraded=route != "primary", event_ts=float(event_ts),
                scored_ts=scored_ts, source={"topic": topic, "partition": part, "offset": off},
                route=route,
            )
        )  # fmt: skip
    values = batch.encode()
    assert len(values) == len(batch) == len(rows)
    for value, score in zip(values, expected, strict=True):
        assert orjson.loads(value) == score.model_dump(mode="json")
        assert Score.model_validate_json(value) == score
        assert isinstance(orjson.loads(value)["event_ts"], float)


@settings(max_examples=200, deadline=None)
@given(rows=_SCORE_ROWS)
def test_a_score_batch_extended_at_once_writes_what_one_add_per_score_writes(
    rows: list[tuple[str, str, float, float, float, str, str, str, int, int]],
) -> None:
    encoder = ScoreEncoder("m", "1", False, "primary")
    one_by_one, at_once = ScoreBatch(), ScoreBatch()
    for event_id, entity_id, score, event_ts, *_, topic, part, off in rows:
        one_by_one.add(encoder, event_id, entity_id, score, event_ts, 1.5, topic, part, off)
    columns = list(zip(*rows, strict=True)) if rows else [[]] * 10
    at_once.extend(
        encoder, columns[0], columns[1], [float(v) for v in columns[2]],
        [float(v) for v in columns[3]], 1.5, columns[7], columns[8], columns[9],
    )  # fmt: skip
    assert at_once.encode() == one_by_one.encode()


def test_dead_letter_headers_keep_the_originals_first_and_cut_long_messages() -> None:
    headers = dead_letter_headers(
        [("trace", b"1")], stage="validate", error_class="ValidationError",
        message="é" * 2000, topic="events", partition=3, offset=42, timestamp_ms=None,
        app_id="streamscore",
    )  # fmt: skip
    assert headers[0] == ("trace", b"1")
    names = [name for name, _ in headers[1:]]
    assert names == [
        "dlq.stage", "dlq.error.class", "dlq.error.message", "dlq.source.topic",
        "dlq.source.partition", "dlq.source.offset", "dlq.source.timestamp", "dlq.app",
    ]  # fmt: skip
    values = dict(headers[1:])
    message = values["dlq.error.message"]
    assert isinstance(message, bytes)
    assert len(message) <= MAX_MESSAGE_BYTES
    assert message.decode("utf-8") == "é" * (MAX_MESSAGE_BYTES // 2)  # no split character
    assert values["dlq.source.timestamp"] == b"-1"
    assert truncate_utf8("short") == b"short"
