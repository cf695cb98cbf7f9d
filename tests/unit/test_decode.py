"""Decoding a fetched chunk: every record is either a valid event or a dead letter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from unittest.mock import patch

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.events import EVENT_RECORDS
from streams.deadletters import DeadLetterSink
from streams.decode import Decoded, decode_events, decode_feature_updates
from streams.metrics import Metrics

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
    | st.lists(valid_events, min_size=1, max_size=5).map(
        lambda v: [*v, event(merchant="m" * 70_000)]
    )
)
def test_a_chunk_decodes_as_the_careful_record_by_record_path_would(chunk: list[bytes]) -> None:
    """The all-clean shortcut and the careful loop give the same events and dead letters."""
    records = [Rec(value, offset=i) for i, value in enumerate(chunk)]

    def seen(decoded: Decoded[Any]) -> tuple[list[Any], list[Any]]:
        return (
            [(r.offset, item) for r, item in zip(decoded.records, decoded.items, strict=True)],
            sorted((d.record.offset, d.stage, d.error_class, d.message) for d in decoded.dead),
        )

    fast = decode_events(records)
    with patch("streams.decode._parse_all", return_value=None):
        careful = decode_events(records)
    assert seen(fast) == seen(careful)


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
            expected = EVENT_RECORDS.validate_python([obj])[0]
        except ValidationError as exc:
            letter = dead[record.offset]
            assert letter.error_class == "ValidationError"
            for error in exc.errors(include_url=False):
                field = ".".join(map(str, error["loc"][1:])) or "record"
                assert f"{field}: {error['msg']}" in letter.message
        else:
            if record.offset in items:
                assert items[record.offset] == expected
            else:
                assert dead[record.offset].error_class == "KeyMismatch"
