"""Dead letters of any size: byte for byte where they fit, cut (and saying so) where not."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import deadletter
from streams.kafka.emit import Delivered, Outgoing
from streams.metrics import Metrics
from streams.scoring.deadletters import MIN_DEAD_LETTER_BYTES, DeadLetterSink, fit, record_bytes
from streams.scoring.decode import DeadLetter


@dataclass(frozen=True)
class Rec:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str = "events"
    partition: int = 1
    offset: int = 7
    timestamp: int | None = 1_000


def letter(record: Rec) -> DeadLetter:
    return DeadLetter(record, "decode", "RecordTooLarge", "too large")  # type: ignore[arg-type]


def sink(max_bytes: int, emitter: Any = None, fatal: list[BaseException] | None = None) -> Any:
    return DeadLetterSink(
        "dlq", "app", Metrics.create(), emitter=emitter, max_bytes=max_bytes,
        on_fatal=(fatal if fatal is not None else []).append,
    )  # fmt: skip


def headers_of(message: Outgoing) -> dict[str, bytes]:
    return {name: value for name, value in message.headers or () if isinstance(value, bytes)}


def test_a_dead_letter_that_fits_is_the_record_byte_for_byte() -> None:
    record = Rec(b"k", b"v" * 100_000, [("trace", b"\xff\x00")])
    [message] = sink(200_000).messages([letter(record)])
    assert (message.key, message.value) == (record.key, record.value)
    assert message.headers[0] == ("trace", b"\xff\x00")
    assert deadletter.VALUE_BYTES not in headers_of(message)


def test_a_dead_letter_too_large_is_cut_to_fit_and_says_what_the_value_was() -> None:
    value = bytes(range(256)) * 4_000  # 1,024,000 bytes
    record = Rec(b"acct-1", value, [("trace", b"t")])
    [message] = sink(50_000).messages([letter(record)])
    assert record_bytes(message) <= 50_000
    assert message.key == b"acct-1"
    assert message.value is not None
    assert value.startswith(message.value)
    assert len(message.value) > 40_000  # cut to fit, not emptied
    found = headers_of(message)
    assert found[deadletter.VALUE_BYTES] == b"1024000"
    assert found[deadletter.VALUE_SHA256] == hashlib.sha256(value).hexdigest().encode()
    assert found[deadletter.STAGE] == b"decode"  # why it is a dead letter stays
    assert message.headers[0] == ("trace", b"t")  # and the record's own headers


def test_a_key_or_headers_too_large_are_cut_too_and_the_reason_stays() -> None:
    key = b"k" * 30_000
    record = Rec(key, b"v" * 10, [("big", b"h" * 30_000)])
    [message] = sink(MIN_DEAD_LETTER_BYTES).messages([letter(record)])
    assert record_bytes(message) <= MIN_DEAD_LETTER_BYTES
    found = headers_of(message)
    assert found[deadletter.KEY_BYTES] == b"30000"
    assert found[deadletter.KEY_SHA256] == hashlib.sha256(key).hexdigest().encode()
    assert found[deadletter.HEADERS_DROPPED] == b"1"
    assert "big" not in found
    assert found[deadletter.SOURCE_OFFSET] == b"7"


@settings(max_examples=200, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=20_000)),
    value=st.one_of(st.none(), st.binary(max_size=60_000)),
    headers=st.lists(
        st.tuples(
            st.one_of(st.text(max_size=20), st.sampled_from(deadletter.HEADER_NAMES)),
            st.binary(max_size=5_000),
        ),
        max_size=8,
    ),
    limit=st.integers(MIN_DEAD_LETTER_BYTES, 80_000),
)
def test_any_dead_letter_is_cut_to_any_limit_keeping_its_reason(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], limit: int
) -> None:
    message = sink(limit).message(letter(Rec(key, value, headers)))
    cut = fit(message, limit)
    assert record_bytes(cut) <= limit
    assert headers_of(cut)[deadletter.STAGE] == b"decode"
    if record_bytes(message) <= limit:
        assert cut is message
    else:
        assert headers_of(cut)[deadletter.VALUE_BYTES] == str(len(value or b"")).encode()


class RefusingEmitter:
    """Acknowledges what fits ``broker_limit`` and refuses the rest as too large."""

    def __init__(self, broker_limit: int, error: int = KafkaError.MSG_SIZE_TOO_LARGE) -> None:
        self.broker_limit = broker_limit
        self.error = error
        self.landed: list[Outgoing] = []
        self.sends = 0

    def send(
        self, messages: list[Outgoing], callback: Callable[[Delivered], None], **_: Any
    ) -> None:
        self.sends += 1
        report = Delivered()
        for message in messages:
            if record_bytes(message) <= self.broker_limit:
                self.landed.append(message)
            else:
                report.failures.append((message, KafkaError(self.error)))
        callback(report)


def test_a_dead_letter_the_broker_refuses_is_sent_again_cut_until_it_lands() -> None:
    # The DLQ topic said 1 MB, but the broker takes 100 KB: halving finds a size it takes.
    emitter = RefusingEmitter(100_000)
    done: list[bool] = []
    records = [Rec(b"a", b"x" * 900_000, offset=1), Rec(b"b", b"small", offset=2)]
    sink(1_100_000, emitter).send([letter(r) for r in records], lambda: done.append(True))
    assert done == [True]
    by_offset = {headers_of(m)[deadletter.SOURCE_OFFSET]: m for m in emitter.landed}
    assert set(by_offset) == {b"1", b"2"}
    assert by_offset[b"2"].value == b"small"  # the one that fitted went whole, once
    assert headers_of(by_offset[b"1"])[deadletter.VALUE_BYTES] == b"900000"
    assert record_bytes(by_offset[b"1"]) <= 100_000
    assert emitter.sends == 5  # 1.1 MB, then halved: 450 KB, 225 KB, 112 KB, 56 KB


def test_a_refusal_that_no_cut_can_fix_stops_intake_with_the_reason() -> None:
    fatal: list[BaseException] = []
    emitter = RefusingEmitter(0, KafkaError.TOPIC_AUTHORIZATION_FAILED)
    done: list[bool] = []
    sink(1_000_000, emitter, fatal).send([letter(Rec(b"a", b"v"))], lambda: done.append(True))
    assert done == []
    assert "TOPIC_AUTHORIZATION_FAILED" in str(fatal[0])


def test_a_record_with_headers_named_like_ours_is_dead_lettered_by_its_own_source() -> None:
    # A producer may send any bytes under any name, dlq.* included: ours come last and win.
    emitter = RefusingEmitter(100_000)
    record = Rec(b"a", b"x" * 150_000, [(deadletter.SOURCE_OFFSET, b"\x8f\xde"),
                                         (deadletter.SOURCE_TOPIC, b"\xff")], offset=9)  # fmt: skip
    done: list[bool] = []
    sink(200_000, emitter).send([letter(record)], lambda: done.append(True))
    assert done == [True]
    [landed] = emitter.landed
    assert landed.headers[:2] == record.headers  # kept as they were
    assert headers_of(landed)[deadletter.SOURCE_OFFSET] == b"9"
