"""A declared event's validation: the msgspec shortcut accepts nothing pydantic refuses
and reads the same values; models it cannot mirror are left to pydantic; refusals name
their stage."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, field_validator

from streams.pipeline.errors import PipelineError
from streams.pipeline.events import EventSchema, Invalid, fast_decoder


class Probe(BaseModel):
    who: str = Field(min_length=1, max_length=4)
    eid: str
    ts: float
    amount: float = Field(ge=0, lt=100)
    count: int = Field(gt=-3, le=10)
    flag: bool
    kind: Literal["x", "y"]
    level: Literal[1, 2]
    note: str | None = None
    ratio: float | None = Field(default=1.5, ge=0)


SCHEMA = EventSchema(Probe, key="who", event_id="eid", time="ts")
FIELDS = list(Probe.model_fields)

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 2, -3, 10, 11, 99.999, 100, -0.0, 1.5, "x", "y", "", "abcd", "abcde"]),
    st.text(max_size=6),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)


@st.composite
def documents(draw: Any) -> bytes:
    chosen = draw(st.lists(st.sampled_from([*FIELDS, "extra"]), unique=True))
    doc = {name: draw(values) for name in chosen}
    if draw(st.booleans()):  # mostly valid, with one field changed
        doc = {
            "who": "ab", "eid": "e1", "ts": 1.0, "amount": 5.0, "count": 0, "flag": True,
            "kind": "x", "level": 1, **doc,
        }  # fmt: skip
    return json.dumps(doc).encode()


@settings(max_examples=400, deadline=None)
@given(documents())
def test_the_shortcut_accepts_nothing_pydantic_refuses_and_reads_the_same(value: bytes) -> None:
    assert SCHEMA.fast is not None
    try:
        fast = SCHEMA.fast.decode(value)
    except Exception:
        return  # refused: pydantic decides
    slow = SCHEMA.model.model_validate_json(value)  # raises if the shortcut was too lenient
    for name in FIELDS:
        assert getattr(fast, name) == getattr(slow, name), name


def test_a_model_with_a_pattern_or_a_validator_is_left_to_pydantic() -> None:
    class Patterned(BaseModel):
        key: str = Field(pattern="^a")

    class Validated(BaseModel):
        key: str

        @field_validator("key")
        @classmethod
        def _upper(cls, value: str) -> str:
            return value.upper()

    assert fast_decoder(Patterned) is None
    assert fast_decoder(Validated) is None
    schema = EventSchema(Validated, key="key", event_id="key", time=None)
    assert schema.validate(None, b'{"key": "abc"}').key == "ABC"


@pytest.mark.parametrize(
    ("value", "stage", "error_class"),
    [
        (None, "decode", "EmptyRecord"),
        (b"[1]", "decode", "NotAnObject"),
        (b"{", "decode", "ValidationError"),
        (b'{"who": "ab"}', "validate", "ValidationError"),
        (b"{" + b" " * 70_000 + b"}", "decode", "RecordTooLarge"),
    ],
)
def test_refusals_name_their_stage(value: bytes | None, stage: str, error_class: str) -> None:
    got = SCHEMA.validate(None, value)
    assert isinstance(got, Invalid)
    assert (got.stage, got.error_class) == (stage, error_class)


def test_the_record_key_must_be_the_events_key() -> None:
    good = (
        b'{"who": "ab", "eid": "e", "ts": 1, "amount": 1, "count": 1, "flag": false,'
        b' "kind": "y", "level": 2}'
    )
    assert not isinstance(SCHEMA.validate(b"ab", good), Invalid)
    got = SCHEMA.validate(b"other", good)
    assert isinstance(got, Invalid)
    assert got.error_class == "KeyMismatch"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key": "nope"}, "key 'nope' is not a field of Probe"),
        ({"key": "count"}, "key 'count' must be a string field"),
        ({"key": "note"}, "key 'note' cannot be optional"),
        ({"time": "who"}, "time 'who' must be a required number"),
    ],
)
def test_roles_are_checked_against_the_model(kwargs: dict[str, str], message: str) -> None:
    arguments = {"key": "who", "event_id": "eid", "time": "ts", **kwargs}
    with pytest.raises(PipelineError, match=message):
        EventSchema(Probe, **arguments)


def test_an_unsupported_field_type_is_refused_with_its_name() -> None:
    class Nested(BaseModel):
        who: str
        tags: list[str]

    with pytest.raises(PipelineError, match="event field 'tags'"):
        EventSchema(Nested, key="who", event_id="who", time=None)
