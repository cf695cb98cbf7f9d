"""Stage 1: bytes to validated records, a whole fetched chunk at a time.

Each consumed record ends as either a valid event (or feature update) or a
:class:`DeadLetter` saying why not; nothing here raises for bad input. JSON is
parsed per record (``orjson``; a record is never glued to its neighbours, so
one producer cannot smuggle fields into another's record) and the objects are
validated in one pydantic call per chunk; only when that call finds errors
are the bad ones picked out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Generic, Protocol, TypeVar

import orjson
from pydantic import TypeAdapter, ValidationError

from schemas.deadletter import Stage
from schemas.events import (
    EVENT_RECORDS,
    FEATURE_UPDATES,
    MAX_PROFILE_FEATURES,
    MAX_RECORD_BYTES,
    EventRecord,
    FeatureUpdate,
)
from streams.errors import EmptyRecord, KeyMismatch, NotAnObject, RecordTooLarge
from streams.undecodable import UndecodableRecord


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


def decode_events(records: Sequence[Record]) -> Decoded[EventRecord]:
    """Decode and validate events; the key must be the UTF-8 ``entity_id``."""
    return _decode(records, EVENT_RECORDS, _entity_of_dict)


def decode_feature_updates(records: Sequence[Record]) -> Decoded[FeatureUpdate]:
    """Decode and validate profile feature updates; the key must be the ``entity_id``."""
    return _decode(records, FEATURE_UPDATES, _entity_of_update, max_fields=MAX_PROFILE_FEATURES)


def _entity_of_dict(item: EventRecord) -> str:
    return item["entity_id"]


def _entity_of_update(item: FeatureUpdate) -> str:
    return item.entity_id


def _decode(
    records: Sequence[Record],
    adapter: TypeAdapter[list[Any]],
    entity_of: Any,
    max_fields: int | None = None,
) -> Decoded[Any]:
    dead: list[DeadLetter] = []
    objects = _parse_all(records) if max_fields is None else None
    if objects is not None:
        sources: list[Record] = list(records)
    else:
        objects, sources = _parse_each(records, dead, max_fields)

    items, sources = _validate(objects, sources, adapter, dead)

    # The key must be the entity id, so that its partition (and its order) is the entity's.
    ok_records: list[Record] = []
    ok_items: list[Any] = []
    for record, item in zip(sources, items, strict=True):
        entity = entity_of(item)
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


def _parse_all(records: Sequence[Record]) -> list[Any] | None:
    """Every record's JSON object, parsed in C-level passes; None if any needs a closer look.

    The usual chunk has no bad record: this is the careful loop below without its
    per-record Python steps. Any doubt (a missing value, a record too large, not
    JSON, not an object, one the client could not decode) sends the whole chunk
    through that loop, which says what is wrong with each.
    """
    if UndecodableRecord in set(map(type, records)):
        return None
    values = list(map(_VALUE, records))
    try:
        longest = max(map(len, values), default=0)  # a None value raises TypeError
    except TypeError:
        return None
    if longest + max(map(len, filter(None, map(_KEY, records))), default=0) > MAX_RECORD_BYTES:
        return None
    try:
        objects = list(map(orjson.loads, values))
    except orjson.JSONDecodeError:
        return None
    if not objects or set(map(type, objects)) != {dict}:
        return None
    return objects


def _parse_each(
    records: Sequence[Record], dead: list[DeadLetter], max_fields: int | None
) -> tuple[list[Any], list[Record]]:
    """Parse record by record, dead-lettering each one that is not a JSON object in bounds."""
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
    adapter: TypeAdapter[list[Any]],
    dead: list[DeadLetter],
) -> tuple[list[Any], list[Record]]:
    """Validate all objects in one call; on errors, dead-letter the bad ones, keep the rest."""
    if not objects:
        return [], []
    try:
        return adapter.validate_python(objects), sources
    except ValidationError as exc:
        reasons: dict[int, list[str]] = {}
        for error in exc.errors(include_url=False, include_input=False):
            index, *path = error["loc"]
            field = ".".join(str(part) for part in path) or "record"
            reasons.setdefault(int(index), []).append(f"{field}: {error['msg']}")
    for index in sorted(reasons):
        message = "; ".join(reasons[index])
        dead.append(DeadLetter(sources[index], "validate", ValidationError.__name__, message))
    keep = [i for i in range(len(objects)) if i not in reasons]
    good = adapter.validate_python([objects[i] for i in keep])
    return good, [sources[i] for i in keep]
