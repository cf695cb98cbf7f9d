"""Stage 1: bytes to validated records, a whole fetched chunk at a time.

Each consumed record ends as either a valid event (or feature update) or a
:class:`DeadLetter` saying why not; nothing here raises for bad input. Each
record is parsed on its own (a record is never glued to its neighbours, so one
producer cannot smuggle fields into another's record). Events are parsed and
checked by msgspec, one C pass per record; what it refuses, and feature
updates, are parsed by orjson and validated by pydantic (the schemas of
record) in one call per chunk, which marks a bad item instead of failing the
chunk; only the bad ones are validated again, for their reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice, repeat
from operator import attrgetter, is_, itemgetter
from typing import Annotated, Any, Generic, Protocol, TypeVar

import orjson
from pydantic import Field, PlainValidator, TypeAdapter, ValidationError

from schemas.deadletter import Stage
from schemas.events import (
    FAST_EVENT,
    MAX_PROFILE_FEATURES,
    MAX_RECORD_BYTES,
    EventRecord,
    FeatureUpdate,
    is_code,
)
from streams.errors import EmptyRecord, KeyMismatch, NotAnObject, RecordTooLarge
from streams.kafka.undecodable import UndecodableRecord


class Record(Protocol):
    """What the stages need of a consumed Kafka record (aiokafka's ConsumerRecord fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int | None: ...  # milliseconds
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that will not be scored, and why."""

    record: Record
    stage: Stage
    error_class: str
    message: str


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Decoded(Generic[T]):
    """A chunk split into valid items (with their records, in order) and dead letters."""

    records: list[Record]
    items: list[T]
    dead: list[DeadLetter]


class _Rejected:
    """Stands in, in a validated chunk, for an item that failed validation."""


_REJECTED = _Rejected()
#: Matches anything an item schema rejected (tried last), so one bad item never fails a chunk.
_Fallback = Annotated[Any, PlainValidator(lambda _: _REJECTED)]
_FIRST_MATCH = Field(union_mode="left_to_right")


@dataclass(frozen=True, slots=True)
class _Schema:
    """A whole chunk validated in one pass, and the reason for an item that failed."""

    chunk: TypeAdapter[list[Any]]  # each item validated, or _REJECTED
    one: TypeAdapter[Any]

    def why(self, obj: Any) -> str:
        try:
            self.one.validate_python(obj)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            return "; ".join(
                f"{'.'.join(str(part) for part in e['loc']) or 'record'}: {e['msg']}"
                for e in errors
            )
        return "record: rejected"  # not reached: the chunk schema rejects what this does


_EVENTS = _Schema(
    TypeAdapter(list[Annotated[EventRecord | _Fallback, _FIRST_MATCH]]), TypeAdapter(EventRecord)
)
_UPDATES = _Schema(
    TypeAdapter(list[Annotated[FeatureUpdate | _Fallback, _FIRST_MATCH]]),
    TypeAdapter(FeatureUpdate),
)


def decode_events(records: Sequence[Record]) -> Decoded[EventRecord]:
    """Decode and validate events; the key must be the UTF-8 ``entity_id``."""
    dead: list[DeadLetter] = []
    items, sources = _events(records, dead)
    return _check_keys(items, sources, dead, _entity_of_dict)


def decode_feature_updates(records: Sequence[Record]) -> Decoded[FeatureUpdate]:
    """Decode and validate profile feature updates; the key must be the ``entity_id``."""
    dead: list[DeadLetter] = []
    objects, sources = _parse_each(records, dead, MAX_PROFILE_FEATURES)
    items, sources = _validate(objects, sources, _UPDATES, dead)
    return _check_keys(items, sources, dead, _entity_of_update)


_entity_of_dict = itemgetter("entity_id")  # of an EventRecord
_entity_of_update = attrgetter("entity_id")  # of a FeatureUpdate


def _check_keys(
    items: list[Any], sources: list[Record], dead: list[DeadLetter], entity_of: Any
) -> Decoded[Any]:
    """The key must be the entity id, so that its partition (and its order) is the entity's."""
    entities = list(map(entity_of, items))
    if list(map(_KEY, sources)) == list(map(str.encode, entities)):
        return Decoded(sources, items, dead)
    ok_records: list[Record] = []
    ok_items: list[Any] = []
    for record, item, entity in zip(sources, items, entities, strict=True):
        key = record.key
        if key is not None and key == entity.encode():
            ok_records.append(record)
            ok_items.append(item)
        else:
            shown = "no key" if key is None else f"key {key[:200]!r}"
            message = f"record has {shown}; it must be the UTF-8 bytes of entity_id {entity!r}"
            dead.append(DeadLetter(record, "validate", KeyMismatch.__name__, message))
    return Decoded(ok_records, ok_items, dead)


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

    An event is valid if msgspec accepts it (``schemas.events.FAST_EVENT``: one C
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
        objects, kept = _parse_each([record], dead, None)
        valid, kept = _validate(objects, kept, _EVENTS, dead)
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


def _parse_each(
    records: Sequence[Record], dead: list[DeadLetter], max_fields: int | None
) -> tuple[list[Any], list[Record]]:
    """Parse record by record (orjson), dead-lettering each that is not a JSON object in bounds."""
    objects: list[Any] = []
    sources: list[Record] = []
    loads = orjson.loads
    for record in records:
        if type(record) is UndecodableRecord:  # the client library could not decode it
            dead.append(DeadLetter(record, "decode", "UnicodeDecodeError", record.reason))
            continue
        value = record.value
        if value is None:
            dead.append(DeadLetter(record, "decode", EmptyRecord.__name__, "record has no value"))
            continue
        size = len(value) + len(record.key or b"")
        if size > MAX_RECORD_BYTES:
            message = f"record is {size} bytes; at most {MAX_RECORD_BYTES} (64 KiB) are accepted"
            dead.append(DeadLetter(record, "decode", RecordTooLarge.__name__, message))
            continue
        try:
            obj = loads(value)
        except orjson.JSONDecodeError as exc:
            dead.append(DeadLetter(record, "decode", type(exc).__name__, f"not JSON: {exc}"))
            continue
        if type(obj) is not dict:
            message = f"expected a JSON object, got {type(obj).__name__}"
            dead.append(DeadLetter(record, "validate", NotAnObject.__name__, message))
            continue
        if max_fields is not None and len(obj) > max_fields + 1:
            message = f"{len(obj) - 1} features; at most {max_fields} are accepted"
            dead.append(DeadLetter(record, "validate", RecordTooLarge.__name__, message))
            continue
        objects.append(obj)
        sources.append(record)
    return objects, sources


def _validate(
    objects: list[Any],
    sources: list[Record],
    schema: _Schema,
    dead: list[DeadLetter],
) -> tuple[list[Any], list[Record]]:
    """Validate all objects in one pass; dead-letter the ones that fail, keep the rest."""
    if not objects:
        return [], []
    items = schema.chunk.validate_python(objects)
    rejected = list(map(is_, items, repeat(_REJECTED)))
    if not any(rejected):
        return items, sources
    good: list[Any] = []
    kept: list[Record] = []
    for obj, item, source, bad in zip(objects, items, sources, rejected, strict=True):
        if not bad:
            good.append(item)
            kept.append(source)
            continue
        dead.append(DeadLetter(source, "validate", ValidationError.__name__, schema.why(obj)))
    return good, kept
