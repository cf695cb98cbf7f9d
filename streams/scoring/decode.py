"""Stage 1: bytes to validated records, a whole fetched chunk at a time.

Each consumed record ends as either a valid item (an event, a feature update)
or a :class:`DeadLetter` saying why not; nothing here raises for bad input.
Each record is parsed on its own (a record is never glued to its neighbours,
so one producer cannot smuggle fields into another's record) by orjson
(:func:`parse_each`), and the chunk validated by pydantic in one call
(:func:`validate_chunk`), which marks a bad item instead of failing the chunk;
only the bad ones are validated again, for their reasons. Feature updates are
decoded here; a pipeline's events by its intake
(:func:`streams.scoring.declared.validate_records`, msgspec first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter, is_
from typing import Annotated, Any, Generic, Protocol, TypeVar

import orjson
from pydantic import Field, PlainValidator, TypeAdapter, ValidationError

from schemas.deadletter import Stage
from schemas.profiles import MAX_PROFILE_FEATURES, MAX_RECORD_BYTES, FeatureUpdate
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
Fallback = Annotated[Any, PlainValidator(lambda _: _REJECTED)]
FIRST_MATCH = Field(union_mode="left_to_right")


@dataclass(frozen=True, slots=True)
class ChunkSchema:
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

    @classmethod
    def of(cls, item: Any) -> ChunkSchema:
        """The schema of chunks of ``item`` (a pydantic model or a TypedDict)."""
        return cls(TypeAdapter(list[Annotated[item | Fallback, FIRST_MATCH]]), TypeAdapter(item))


_UPDATES = ChunkSchema.of(FeatureUpdate)


def decode_feature_updates(records: Sequence[Record]) -> Decoded[FeatureUpdate]:
    """Decode and validate profile feature updates; the key must be the ``entity_id``."""
    dead: list[DeadLetter] = []
    objects, sources = parse_each(records, dead, MAX_PROFILE_FEATURES)
    items, sources = validate_chunk(objects, sources, _UPDATES, dead)
    return check_keys(items, sources, dead, _entity_of_update)


_entity_of_update = attrgetter("entity_id")  # of a FeatureUpdate


def check_keys(
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


def parse_each(
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


def validate_chunk(
    objects: list[Any],
    sources: list[Record],
    schema: ChunkSchema,
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
