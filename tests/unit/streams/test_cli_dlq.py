"""The pure part of `streamscore dlq replay`: which record goes back where, with which headers."""

from __future__ import annotations

from dataclasses import dataclass

import click
import pytest

from schemas.deadletter import dead_letter_headers
from streams.cli.dlq import Replay, last_header, original_headers, parse_since, to_replay

INPUTS = frozenset({"events", "features"})


@dataclass
class FakeMessage:
    """The few ``confluent_kafka.Message`` methods the replay reads."""

    _headers: list[tuple[str, bytes | None]] | None
    _key: bytes | None = b"acct-1"
    _value: bytes | None = b'{"event_id": "e-1"}'
    _partition: int = 2
    _offset: int = 40

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def dead(
    original: list[tuple[str, bytes | None]] | None,
    stage: str = "model",
    topic: str = "events",
    partition: int = 5,
) -> list[tuple[str, bytes | None]]:
    headers = dead_letter_headers(
        original, stage=stage, error_class="NonFiniteScore", message="nan",
        topic=topic, partition=partition, offset=7, timestamp_ms=1, app_id="streamscore",
    )  # fmt: skip
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in headers]


def test_a_dead_letter_goes_back_to_its_source_partition_with_its_own_headers_only() -> None:
    original: list[tuple[str, bytes | None]] = [("trace-id", b"t-1"), ("empty", None)]
    item = to_replay(FakeMessage(dead(original)), INPUTS)
    assert item == Replay(
        dlq_partition=2, dlq_offset=40, stage="model", topic="events", partition=5,
        key=b"acct-1", value=b'{"event_id": "e-1"}', headers=original,
    )  # fmt: skip


def test_a_dead_letter_replayed_and_failed_again_keeps_the_latest_reason() -> None:
    twice = dead(original_headers(dead([("a", b"1")], stage="model")), stage="validate")
    item = to_replay(FakeMessage(twice), INPUTS)
    assert isinstance(item, Replay)
    assert (item.stage, item.headers) == ("validate", [("a", b"1")])
    both = dead([("a", b"1")], stage="model") + dead(None, stage="validate")
    assert last_header(both, "dlq.stage") == "validate"


def test_records_that_are_not_dead_letters_of_an_input_are_skipped_with_a_reason() -> None:
    assert "not a dead letter" in str(to_replay(FakeMessage(None), INPUTS))
    assert "not a dead letter" in str(to_replay(FakeMessage([("dlq.stage", b"model")]), INPUTS))
    other = to_replay(FakeMessage(dead(None, topic="payments")), INPUTS)
    assert other == "source topic 'payments' is not an input of this app"
    feature = to_replay(FakeMessage(dead(None, stage="validate", topic="features")), INPUTS)
    assert isinstance(feature, Replay)
    assert feature.topic == "features"


def test_since_takes_epoch_seconds_or_iso_8601() -> None:
    assert parse_since("1763769600") == 1_763_769_600_000
    assert parse_since("1763769600.5") == 1_763_769_600_500
    assert parse_since("2025-11-22T00:00:00Z") == 1_763_769_600_000
    assert parse_since("2025-11-22T00:00:00") == 1_763_769_600_000  # no zone: UTC
    assert parse_since("2025-11-22T01:00:00+01:00") == 1_763_769_600_000
    with pytest.raises(click.BadParameter, match="ISO 8601"):
        parse_since("yesterday")


def test_a_dead_letter_cut_to_fit_is_not_replayed_since_its_record_is_not_whole() -> None:
    from schemas import deadletter

    cut = [*dead(None), (deadletter.VALUE_BYTES, b"900000"), (deadletter.VALUE_SHA256, b"ab")]
    reason = to_replay(FakeMessage(cut), INPUTS)
    assert isinstance(reason, str)
    assert "cut to fit" in reason
    # A producer's own header of that name, before ours, is just one of its headers.
    own = dead([(deadletter.VALUE_BYTES, b"1")])
    assert isinstance(to_replay(FakeMessage(own), INPUTS), Replay)
