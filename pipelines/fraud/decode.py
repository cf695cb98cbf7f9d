"""The fraud events of a chunk, validated: msgspec first, pydantic for what it refuses.

msgspec parses and checks an event in one C pass
(:data:`~pipelines.fraud.events.FAST_EVENT`), three times faster than orjson
and pydantic; what it refuses is parsed and validated again by
:mod:`streams.scoring.decode`, which gives a refused record its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from operator import attrgetter, itemgetter
from typing import Any

from pipelines.fraud.events import FAST_EVENT, EventRecord, is_code
from schemas.profiles import MAX_RECORD_BYTES
from streams.kafka.undecodable import UndecodableRecord
from streams.scoring.decode import (
    ChunkSchema,
    DeadLetter,
    Decoded,
    Record,
    check_keys,
    parse_each,
    validate_chunk,
)

__all__ = ["decode_events"]

_EVENTS = ChunkSchema.of(EventRecord)
_entity_of_dict = itemgetter("entity_id")  # of an EventRecord
_VALUE, _KEY = attrgetter("value"), attrgetter("key")
_CURRENCY, _COUNTRY = itemgetter("currency"), itemgetter("country")
_REFUSED = object()  # where msgspec refused a value
#: What msgspec raises for a value: DecodeError (and its ValidationError), UnicodeDecodeError
#: for a string that is not UTF-8, RecursionError for nesting too deep.
_REFUSALS = (ValueError, RecursionError)
_UNTRIED = object()  # where msgspec has not looked yet


def _values_in_bounds(records: Sequence[Record]) -> list[bytes] | None:
    """Every record's value, if none is missing, undecodable or too large (else None)."""
    if not records or UndecodableRecord in set(map(type, records)):
        return None
    values = list(map(_VALUE, records))
    try:
        longest = max(map(len, values))  # a None value raises TypeError
    except TypeError:
        return None
    if longest + max(map(len, filter(None, map(_KEY, records))), default=0) > MAX_RECORD_BYTES:
        return None
    return values


def _events(records: Sequence[Record], dead: list[DeadLetter]) -> tuple[list[Any], list[Record]]:
    """Valid events (with their records, in order); the others dead-lettered.

    An event is valid if msgspec accepts it (``FAST_EVENT``: one C
    pass per record) or, failing that, if pydantic accepts orjson's parse of it;
    the second try also gives a refused record its reason. msgspec skips over
    fields the schema does not have without checking them: their UTF-8 is
    checked here, and a number there beyond a double's range (which orjson
    refuses) does not refuse the event, whose unknown fields are ignored. A
    record's fate never depends on its neighbours.
    """
    values = _values_in_bounds(records)
    items: list[Any] = []
    if values is None:  # some record is not even worth a parse: sort them out one by one
        items = [_UNTRIED] * len(records)
    else:
        decode = FAST_EVENT.decode
        while len(items) < len(values):
            try:  # extend() keeps what it decoded before a failure: resume after the bad one
                items.extend(map(decode, islice(values, len(items), None)))
            except _REFUSALS:
                items.append(_REFUSED)
        if _REFUSED not in items and _all_utf8(values):
            codes = "".join(map(_CURRENCY, items)) + "".join(map(_COUNTRY, items))
            if codes.isascii() and codes.isalpha() and codes.isupper():  # lengths are checked
                return items, list(records)
    good: list[Any] = []
    sources: list[Record] = []
    for record, item in zip(records, items, strict=True):
        if item is _UNTRIED:
            item = _decode_one(record)
        if (
            item is not _REFUSED
            and is_code(item["currency"])
            and is_code(item["country"])
            and _all_utf8([record.value or b""])
        ):
            good.append(item)
            sources.append(record)
            continue
        objects, kept = parse_each([record], dead, None)
        valid, kept = validate_chunk(objects, kept, _EVENTS, dead)
        good.extend(valid)
        sources.extend(kept)
    return good, sources


def _all_utf8(values: list[bytes]) -> bool:
    """Whether every value is UTF-8 (msgspec skips unknown fields without checking that).

    One C call over the chunk: values msgspec accepted begin and end with ASCII
    (braces, whitespace), so no two can join into a character neither holds.
    """
    try:
        b"".join(values).decode()
    except UnicodeDecodeError:
        return False
    return True


def _decode_one(record: Record) -> Any:
    """msgspec's event for one record, or _REFUSED."""
    values = _values_in_bounds([record])
    if values is None:
        return _REFUSED
    try:
        return FAST_EVENT.decode(values[0])
    except _REFUSALS:
        return _REFUSED


def decode_events(records: Sequence[Record]) -> Decoded[EventRecord]:
    """Decode and validate events; the key must be the UTF-8 ``entity_id``."""
    dead: list[DeadLetter] = []
    items, sources = _events(records, dead)
    return check_keys(items, sources, dead, _entity_of_dict)
