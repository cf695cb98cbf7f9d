"""Decoding a fetched chunk: every record is either a valid event or a dead letter.

Run on the fraud pipeline's event through the validation every pipeline's intake runs
(:func:`streams.scoring.declared.validate_records`: msgspec's shortcut, pydantic for
what it refuses), with tricky and hostile records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipelines.fraud import pipeline as fraud
from pipelines.fraud.events import Event
from pipelines.fraud.synthetic import malformed_values
from streams.metrics import Metrics
from streams.scoring.deadletters import DeadLetterSink
from streams.scoring.declared import validate_records
from streams.scoring.decode import Decoded, decode_feature_updates

EVENT = {
    "event_id": "e-1", "entity_id": "acct-1", "ts": 1.0, "amount": 1.0, "currency": "EUR",
    "merchant": "m", "country": "DE", "channel": "app",
}  # fmt: skip


@dataclass
class Rec:
    value: bytes | None
    key: bytes | None = b"acct-1"
    offset: int = 0
    topic: str = "events"
    partition: int = 0
    timestamp: int | None = 1000
    headers: list[tuple[str, bytes]] = field(default_factory=list)


_FIELDS = tuple(fraud.event.model_fields)


def decode_events(records: list[Rec]) -> Decoded[dict[str, Any]]:
    """The intake's validation of ``records``, each event as a dict of its fields."""
    decoded = validate_records(fraud.schema, records)  # type: ignore[arg-type]
    items = [{name: getattr(item, name) for name in _FIELDS} for item in decoded.items]
    return Decoded(decoded.records, items, decoded.dead)


def event(**changes: object) -> bytes:
    return orjson.dumps({**EVENT, **changes})


def test_a_clean_chunk_passes_in_order() -> None:
    records = [Rec(event(event_id=f"e-{i}"), offset=i) for i in range(5)]
    decoded = decode_events(records)
    assert decoded.dead == []
    assert [e["event_id"] for e in decoded.items] == [f"e-{i}" for i in range(5)]
    assert decoded.records == records


def test_each_kind_of_bad_record_gets_its_stage_and_reason() -> None:
    records = [
        Rec(None),
        Rec(b"x" * (64 * 1024 + 1)),
        Rec(b"{not json"),
        Rec(b"\xff\xfe"),
        Rec(b"[1, 2]"),
        Rec(event(amount=-1, currency="eur")),
        Rec(event(), key=b"acct-2"),
        Rec(event(), key=None),
        Rec(event(), key=b"\xff"),
        Rec(b'{"ts": NaN}'),
        Rec(event(event_id="ok")),
    ]
    for offset, record in enumerate(records):
        record.offset = offset
    decoded = decode_events(records)
    assert [e["event_id"] for e in decoded.items] == ["ok"]
    dead = {letter.record.offset: letter for letter in decoded.dead}
    assert sorted(dead) == list(range(10))
    stages = {o: (d.stage, d.error_class) for o, d in dead.items()}
    assert stages == {
        0: ("decode", "EmptyRecord"),
        1: ("decode", "RecordTooLarge"),
        2: ("decode", "JSONDecodeError"),
        3: ("decode", "JSONDecodeError"),
        4: ("validate", "NotAnObject"),
        5: ("validate", "ValidationError"),
        6: ("validate", "KeyMismatch"),
        7: ("validate", "KeyMismatch"),
        8: ("validate", "KeyMismatch"),
        9: ("decode", "JSONDecodeError"),
    }
    assert "amount" in dead[5].message
    assert "currency" in dead[5].message
    assert "acct-1" in dead[6].message
    assert "no key" in dead[7].message


def test_feature_updates_are_validated_and_bounded() -> None:
    records = [
        Rec(b'{"entity_id": "acct-1", "account_age_days": 3}', offset=0),
        Rec(b'{"entity_id": "acct-1", "account_age_days": "3"}', offset=1),
        Rec(orjson.dumps({"entity_id": "acct-1", **{f"f{i}": i for i in range(300)}}), offset=2),
        Rec(b'{"entity_id": "acct-9"}', offset=3),
    ]
    decoded = decode_feature_updates(records)
    assert [u.features() for u in decoded.items] == [{"account_age_days": 3.0}]
    assert [(d.record.offset, d.stage) for d in decoded.dead] == [
        (2, "validate"),
        (1, "validate"),
        (3, "validate"),
    ]


hostile = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda d: orjson.dumps(d),
        st.dictionaries(st.text(max_size=8), st.integers(-(2**63), 2**63 - 1)),
    ),
    st.builds(lambda n: b'{"amount": ' + str(n).encode() + b"}", st.integers(2**63, 2**70)),
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(0, 3000)),
    st.just(b'{"amount": NaN}'),
    st.just(b'{"amount": Infinity}'),
    st.builds(event, amount=st.floats(allow_nan=False, allow_infinity=False)),
    st.builds(event, entity_id=st.text(max_size=5)),
    st.builds(lambda raw: event(event_id="@").replace(b"@", raw), st.binary(max_size=4)),
    st.builds(lambda n: event(x="@").replace(b'"@"', b"[" * n + b"]" * n), st.integers(0, 3000)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(hostile, st.one_of(st.none(), st.binary(max_size=10))), max_size=20))
def test_hostile_input_always_ends_as_an_event_or_a_dead_letter(
    chunk: list[tuple[bytes, bytes | None]],
) -> None:
    records = [Rec(value, key=key, offset=i) for i, (value, key) in enumerate(chunk)]
    decoded = decode_events(records)
    offsets = sorted([r.offset for r in decoded.records] + [d.record.offset for d in decoded.dead])
    assert offsets == list(range(len(records)))
    assert all(d.message and d.error_class for d in decoded.dead)


header_lists = st.lists(
    st.tuples(st.text(max_size=10), st.one_of(st.none(), st.binary(max_size=30))), max_size=4
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(hostile, st.one_of(st.none(), st.binary(max_size=10)), header_lists),
        max_size=12,
    )
)
def test_dead_letters_of_hostile_records_keep_their_bytes_and_headers(
    chunk: list[tuple[bytes, bytes | None, list[tuple[str, bytes | None]]]],
) -> None:
    records = [Rec(v, key=k, offset=i, headers=h) for i, (v, k, h) in enumerate(chunk)]
    decoded = decode_events(records)
    sink = DeadLetterSink("dlq", "app", Metrics.create())
    for letter, message in zip(decoded.dead, sink.messages(decoded.dead), strict=True):
        record = letter.record
        assert (message.key, message.value) == (record.key, record.value)
        assert message.headers is not None
        assert message.headers[: len(record.headers)] == record.headers
        assert dict(message.headers[len(record.headers) :])["dlq.stage"] == letter.stage.encode()


# Where msgspec (the fast path) and orjson + pydantic (the careful one) could part ways.
_NUMBERS = [
    "0", "-0", "1", "0.5", "1e308", "1e309", "-1e309", "1.0e-400", "18446744073709551616",
    "1" + "0" * 400, "true", "null", '"1"', "[1]",
]  # fmt: skip
_CODES = [
    '"EUR"', '"DE"', '"eur"', '"\u00c9UR"', '"EU"', '"EURO"', '"E\\nR"', '"EU\\n"',
    '"\\uff25UR"', '"D\\u0045"', '"\\ud800E"', '""', "1",
]  # fmt: skip
_TEXTS = ['"acct-1"', '""', '"\\ud800"', '"\\udc00x"', '"\\u0000"', '"\u00e9"', "1", "null"]
_FIELD_VALUES = {
    "event_id": _TEXTS, "entity_id": _TEXTS, "merchant": _TEXTS, "ts": _NUMBERS,
    "amount": [*_NUMBERS, "-0.5"], "currency": _CODES, "country": _CODES,
    "channel": ['"web"', '"app"', '"WEB"', '"w\\u0065b"', '""', "0"],
    "extra": [
        "1", "NaN", "1e999", '"\\ud800"', "1" * 30, "[" * 600 + "]" * 600, "{}", '"@RAW@"',
    ],
}  # fmt: skip
_GOOD_TEXT = {k: orjson.dumps(v).decode() for k, v in EVENT.items()}


@st.composite
def tricky_records(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """An event record with some odd field values, and the same without unknown fields."""
    fields = list(_GOOD_TEXT.items())
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(sorted(_FIELD_VALUES)))
        value = draw(st.sampled_from(_FIELD_VALUES[name]))
        if draw(st.booleans()):  # a duplicated field, before or after the good one
            fields.insert(draw(st.integers(0, len(fields))), (name, value))
        else:
            fields = [(k, value if k == name else v) for k, v in fields] + (
                [(name, value)] if name == "extra" else []
            )
    before, after = draw(st.sampled_from([("", ""), (" ", "\n"), ("\ufeff", ""), ("", " x")]))

    def text(kept: list[tuple[str, str]]) -> bytes:
        text = before + "{" + ", ".join(f'"{k}": {v}' for k, v in kept) + "}" + after
        return text.encode().replace(b"@RAW@", b"\xc3(\xff")  # not UTF-8

    return text(fields), text([(k, v) for k, v in fields if k != "extra"])


tricky_events = tricky_records().map(lambda pair: pair[0])


valid_events = st.builds(
    event,
    event_id=st.text(min_size=1, max_size=20),
    amount=st.floats(min_value=0, max_value=1e9),
    channel=st.sampled_from(["web", "pos", "app"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(valid_events, max_size=20)
    | st.lists(st.one_of(valid_events, hostile), max_size=20)
    | st.lists(st.one_of(valid_events, tricky_events), max_size=20)
    | st.lists(valid_events, min_size=1, max_size=5).map(
        lambda v: [*v, event(merchant="m" * 70_000)]
    )
)
def test_a_records_fate_never_depends_on_its_neighbours(chunk: list[bytes]) -> None:
    """A chunk decodes as its records would one by one (the C-level passes or the loop)."""
    records = [Rec(value, offset=i) for i, value in enumerate(chunk)]

    def seen(decoded: Decoded[Any]) -> tuple[list[Any], list[Any]]:
        return (
            [(r.offset, item) for r, item in zip(decoded.records, decoded.items, strict=True)],
            sorted((d.record.offset, d.stage, d.error_class, d.message) for d in decoded.dead),
        )

    one_by_one: tuple[list[Any], list[Any]] = ([], [])
    for record in records:
        items, dead = seen(decode_events([record]))
        one_by_one[0].extend(items)
        one_by_one[1].extend(dead)
    assert seen(decode_events(records)) == one_by_one


def _schema_of_record(value: bytes) -> dict[str, Any] | None:
    """What orjson and pydantic (the schema of record) make of a value; None if refused."""
    try:
        return Event.model_validate(orjson.loads(value)).model_dump()
    except (orjson.JSONDecodeError, ValidationError):
        return None


@settings(max_examples=500, deadline=None)
@given(tricky_records())
def test_events_are_what_the_pydantic_schema_accepts(pair: tuple[bytes, bytes]) -> None:
    """msgspec's shortcut accepts nothing the schema refuses, and refuses nothing it accepts.

    The one leeway: fields the schema does not have are ignored, so a number there
    beyond a double's range (orjson refuses it) does not refuse the event.
    """
    value, known_only = pair
    decoded = decode_events([Rec(value)])
    expected = _schema_of_record(known_only)
    if decoded.items:
        assert decoded.items == [expected]
        value.decode()  # every value is UTF-8 JSON (the contract): else it is malformed
    elif decoded.dead[0].error_class != "KeyMismatch":
        assert _schema_of_record(value) is None
        assert decoded.dead[0].message


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(valid_events, hostile), min_size=1, max_size=20))
def test_a_bad_event_costs_none_of_its_neighbours_and_keeps_the_schemas_reasons(
    chunk: list[bytes],
) -> None:
    """The one-pass chunk validation agrees, record by record, with the plain list schema."""
    records = [Rec(value, offset=i) for i, value in enumerate(chunk)]
    decoded = decode_events(records)
    items = dict(zip((r.offset for r in decoded.records), decoded.items, strict=True))
    dead = {d.record.offset: d for d in decoded.dead}
    for record in records:
        try:
            obj = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError:
            continue
        if type(obj) is not dict:
            continue
        try:
            expected = Event.model_validate(obj).model_dump()
        except ValidationError as exc:
            letter = dead[record.offset]
            assert letter.error_class == "ValidationError"
            for error in exc.errors(include_url=False):
                field = ".".join(map(str, error["loc"])) or "record"
                assert f"{field}: {error['msg']}" in letter.message
        else:
            if record.offset in items:
                assert items[record.offset] == expected
            else:
                assert dead[record.offset].error_class == "KeyMismatch"


def test_every_kind_of_malformed_event_the_generator_makes_is_a_dead_letter() -> None:
    values = malformed_values(7, 60)
    records = [Rec(value, offset=i) for i, value in enumerate(values)]
    for chunk in (records, records[:1], [*records[1:], Rec(event(), offset=60)]):
        decoded = decode_events(chunk)
        assert [r.offset for r in decoded.records] == [r.offset for r in chunk if r.offset == 60]
        assert sorted(d.record.offset for d in decoded.dead) == sorted(
            r.offset for r in chunk if r.offset < 60
        )
