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
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**400]),
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
    slow = SCHEMA.careful(value)  # orjson, then pydantic: the schema of record
    assert not isinstance(slow, Invalid), slow  # else the shortcut was too lenient
    assert SCHEMA.model.model_validate_json(value) is not None  # and pydantic's own parse agrees
    for name in FIELDS:
        assert getattr(fast, name) == getattr(slow, name), name


def test_a_model_with_a_pattern_or_a_validator_is_left_to_pydantic() -> None:
    class Patterned(BaseModel):
        key: str = Field(pattern="^a")  # not anchored at the end: pydantic searches

    class Escaped(BaseModel):
        key: str = Field(pattern=r"^\d{3}$")  # \d: Unicode digits, engines may differ

    class Validated(BaseModel):
        key: str

        @field_validator("key")
        @classmethod
        def _upper(cls, value: str) -> str:
            return value.upper()

    assert fast_decoder(Patterned) is None
    assert fast_decoder(Escaped) is None
    assert fast_decoder(Validated) is None
    schema = EventSchema(Validated, key="key", event_id="key", time=None)
    assert schema.validate(None, b'{"key": "abc"}').key == "ABC"


class Coded(BaseModel):
    who: str
    code: str = Field(pattern="^[A-Z]{3}$")
    tag: str = Field(pattern="^x[a-z0-9_]*$")
    sku: str = Field(pattern="^[A-Z][0-9]{2,4}$")


CODED = EventSchema(Coded, key="who", event_id="who", time=None)
texts = st.one_of(
    st.text(max_size=6),
    st.sampled_from(
        [
            "ABC",
            "ABC\n",
            "\nABC",
            "AB",
            "ABCD",
            "abc",
            "x",
            "x_1",
            "xY",
            "A12",
            "A12345",
            "Ä12",
            "A\u0661\u0662",  # Arabic-Indic digits
            "ÀBC",
        ]
    ),
)


@settings(max_examples=400, deadline=None)
@given(texts, texts, texts)
def test_simple_patterns_are_checked_by_the_shortcut_as_pydantic_checks_them(
    code: str, tag: str, sku: str
) -> None:
    assert CODED.fast is not None
    assert len(CODED.fast.patterns) == 3
    value = json.dumps({"who": "w", "code": code, "tag": tag, "sku": sku}).encode()
    try:
        fast = CODED.fast.decode(value)
    except ValueError:
        fast = None
    careful = CODED.careful(value)
    slow = None if isinstance(careful, Invalid) else careful
    assert (fast is None) == (slow is None), (code, tag, sku)
    if fast is not None and slow is not None:
        assert (fast.code, fast.tag, fast.sku) == (slow.code, slow.tag, slow.sku)
    chunk = CODED.validate_many([b"w", b"w"], [value, value])  # the chunk's own pass
    assert [isinstance(c, Invalid) for c in chunk] == [slow is None] * 2


def test_the_packaged_event_keeps_the_shortcut() -> None:
    from pipelines.fraud.events import Event

    schema = EventSchema(Event, key="entity_id", event_id="event_id", time="ts")
    assert schema.fast is not None
    assert [name for name, _ in schema.fast.patterns] == ["currency", "country"]


@pytest.mark.parametrize(
    ("value", "stage", "error_class"),
    [
        (None, "decode", "EmptyRecord"),
        (b"[1]", "validate", "NotAnObject"),
        (b"{", "decode", "JSONDecodeError"),
        (b'{"who": NaN}', "decode", "JSONDecodeError"),
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


def test_an_integer_too_large_for_a_column_is_a_dead_letter_not_a_crash() -> None:
    """msgspec reads integers of any size; one no column can hold must be refused (a
    worker that raised on it would raise again on every restart)."""

    class Counted(BaseModel):
        who: str
        n: int

    schema = EventSchema(Counted, key="who", event_id="who", time=None)
    values = [b'{"who": "a", "n": 3}', b'{"who": "a", "n": 1' + b"0" * 400 + b"}"]
    checked = schema.validate_many([b"a", b"a"], values)
    assert not isinstance(checked[0], Invalid)
    assert isinstance(checked[1], Invalid)
    assert schema.columns([checked[0]])["n"].tolist() == [3.0]
    big = schema.validate(b"a", b'{"who": "a", "n": 18446744073709551615}')  # u64: an int
    assert schema.columns([big])["n"].tolist() == [float(2**64 - 1)]
