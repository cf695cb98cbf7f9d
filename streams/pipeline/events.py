"""A pipeline's event: the user's pydantic model, held to the wire rules, and its columns.

Whatever ``model_config`` the user wrote, events are validated as the packaged
event is: strict types (``"3"`` is not a number), finite numbers, unknown
fields ignored, and a record over 64 KiB malformed. Each record is tried
first with a msgspec decoder derived from the model (one C pass, when every
constraint of the model has a msgspec equivalent); what it refuses goes to
strict JSON (orjson) and pydantic, the schema of record, which accepts or
names the fault (``decode`` for a value that is not JSON, ``validate`` for JSON
the model refuses), so the shortcut only has to accept nothing that path would
refuse (a property test holds it to that). A valid chunk becomes columns:
numbers and booleans as float64 arrays (NaN for an absent optional one),
strings as object arrays, which is what the feature function and the state
walk read.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
import msgspec
import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.types import AllowInfNan
from pydantic_core import PydanticUndefined

from streams.pipeline.errors import PipelineError

__all__ = ["MAX_RECORD_BYTES", "Column", "Columns", "EventSchema", "Invalid", "field_kind"]

#: A record (key + value) larger than this is malformed, for every pipeline.
MAX_RECORD_BYTES = 64 * 1024

Column = npt.NDArray[np.float64] | npt.NDArray[np.object_]
#: What msgspec raises for a value it refuses (UnicodeDecodeError, a ValueError, for bad
#: UTF-8; RecursionError for nesting too deep).
_REFUSALS = (ValueError, RecursionError)
_WIRE = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why one record is not an event: its stage (``decode`` or ``validate``) and reason."""

    stage: Literal["decode", "validate"]
    error_class: str
    message: str


def field_kind(annotation: Any) -> tuple[str, bool] | None:
    """``("number"|"string", optional)`` for a supported field type, None otherwise."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            return None
        optional, annotation = True, args[0]
        origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
        origin = typing.get_origin(annotation)
    if origin is Literal:
        values = typing.get_args(annotation)
        if all(isinstance(v, str) for v in values):
            return "string", optional
        if all(isinstance(v, int | float) for v in values):
            return "number", optional
        return None
    if annotation in (int, float, bool):
        return "number", optional
    if annotation is str:
        return "string", optional
    return None


_BOUNDS = {
    annotated_types.Ge: "ge",
    annotated_types.Gt: "gt",
    annotated_types.Le: "le",
    annotated_types.Lt: "lt",
    annotated_types.MinLen: "min_length",
    annotated_types.MaxLen: "max_length",
}


#: An anchored pattern both regex engines read alike: letters, digits and ``_``, or classes
#: of them, each maybe with a quantifier (no escapes, dots, groups or alternation).
_SIMPLE_PATTERN = re.compile(
    r"\^((?:(?:[A-Za-z0-9_]|\[[A-Za-z0-9_-]+\])(?:\{\d+(?:,\d*)?\}|[+*?])?)+)\$"
)


_REFUSED = object()  # where msgspec refused a record
_NONE = itertools.repeat(None)


def _is_utf8(value: bytes | None) -> bool:
    try:
        (value or b"").decode()
    except UnicodeDecodeError:
        return False
    return True


_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1  # msgspec bounds an int within int64


class FastDecoder:
    """msgspec's decoder of an event, then the anchored patterns of its string fields.

    Pydantic checks patterns with Rust's regex engine; a pattern in
    :data:`_SIMPLE_PATTERN`'s form means the same to Python's, and a whole
    chunk's values are matched in one ``map`` per field
    (:meth:`EventSchema.validate_many`).
    """

    __slots__ = ("decoder", "patterns")

    def __init__(
        self, decoder: msgspec.json.Decoder[Any], patterns: Sequence[tuple[str, re.Pattern[str]]]
    ) -> None:
        self.decoder = decoder
        self.patterns = tuple(patterns)

    def decode(self, value: bytes) -> Any:
        """One record's event; raises (ValueError) on anything it does not accept."""
        event = self.decoder.decode(value)
        for name, pattern in self.patterns:
            text = getattr(event, name)
            if text is not None and pattern.fullmatch(text) is None:
                raise ValueError(f"{name} does not match its pattern")
        return event


def fast_decoder(event: type[BaseModel]) -> FastDecoder | None:
    """A msgspec decoder accepting a subset of what ``event`` accepts (None: no safe one).

    Only plain types, bounds and simple anchored patterns translate: another
    pattern, an alias, a validator or any other constraint leaves the model to
    pydantic alone. ``allow_inf_nan`` needs nothing: msgspec reads no NaN or infinity.
    """
    decorators = event.__pydantic_decorators__
    if any(
        (decorators.validators, decorators.field_validators, decorators.root_validators,
         decorators.model_validators)
    ):  # fmt: skip
        return None
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    patterns: list[tuple[str, re.Pattern[str]]] = []
    for name, info in event.model_fields.items():
        if info.alias not in (None, name) or info.validation_alias not in (None, name):
            return None
        if field_kind(info.annotation) is None:
            return None
        bounds: dict[str, Any] = {}
        for item in info.metadata:
            if isinstance(item, AllowInfNan):
                continue
            pattern = getattr(item, "pattern", None)
            if isinstance(pattern, str) and set(vars(item)) == {"pattern"}:
                simple = _SIMPLE_PATTERN.fullmatch(pattern)
                if simple is None or field_kind(info.annotation) != ("string", False):
                    return None
                patterns.append((name, re.compile(simple.group(1))))
                continue
            key = _BOUNDS.get(type(item))
            if key is None:
                return None
            bounds[key] = getattr(item, key)
        annotation: Any = info.annotation
        base, optional = annotation, False
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            base = next(a for a in typing.get_args(annotation) if a is not type(None))
            optional = True
        if base is int:
            # msgspec takes integers of any size; orjson reads one beyond 64 bits as a
            # float, which a strict int refuses: the shortcut leaves those to the careful path.
            if "gt" in bounds:  # for integers, > g is >= g + 1 (msgspec takes one of them)
                bounds["ge"] = max(bounds.get("ge", _INT_MIN), math.floor(bounds.pop("gt")) + 1)
            if "lt" in bounds:
                bounds["le"] = min(bounds.get("le", _INT_MAX), math.ceil(bounds.pop("lt")) - 1)
            bounds["ge"] = max(math.ceil(bounds.get("ge", _INT_MIN)), _INT_MIN)
            bounds["le"] = min(math.floor(bounds.get("le", _INT_MAX)), _INT_MAX)
        if bounds:
            constrained: Any = typing.Annotated[base, msgspec.Meta(**bounds)]
            annotation = constrained | None if optional else constrained
        if info.is_required():
            fields.append((name, annotation))
        elif info.default is not PydanticUndefined and info.default_factory is None:
            fields.append((name, annotation, info.default))
        else:
            return None
    required = [f for f in fields if len(f) == 2]
    optional_fields = [f for f in fields if len(f) == 3]
    struct = msgspec.defstruct(f"Fast{event.__name__}", [*required, *optional_fields])
    return FastDecoder(msgspec.json.Decoder(struct), patterns)


class EventSchema:
    """Validation and columns of one pipeline's event model."""

    def __init__(self, event: type[BaseModel], *, key: str, event_id: str, time: str | None):
        if not (isinstance(event, type) and issubclass(event, BaseModel)):
            raise PipelineError(f"event must be a pydantic model class, not {event!r}")
        # The wire rules, over whatever the user configured: a subclass merges configs.
        self.model: type[BaseModel] = type(event.__name__, (event,), {"model_config": _WIRE})
        self.fast = fast_decoder(event)
        self.kinds: dict[str, str] = {}
        for name, info in event.model_fields.items():
            kind = field_kind(info.annotation)
            if kind is None:
                raise PipelineError(
                    f"event field {name!r}: type {info.annotation} is not supported; an "
                    "event field is a number, a boolean, a string or a Literal (optional or not)"
                )
            self.kinds[name] = kind[0]
        for role, name in (("key", key), ("event_id", event_id)):
            if name not in self.kinds:
                raise PipelineError(f"{role} {name!r} is not a field of {event.__name__}")
            if self.kinds[name] != "string":
                raise PipelineError(f"{role} {name!r} must be a string field")
            if field_kind(event.model_fields[name].annotation) != ("string", False):
                raise PipelineError(f"{role} {name!r} cannot be optional")
        if time is not None:
            if time not in self.kinds:
                raise PipelineError(f"time {time!r} is not a field of {event.__name__}")
            if field_kind(event.model_fields[time].annotation) != ("number", False):
                raise PipelineError(f"time {time!r} must be a required number (epoch seconds)")
        self.key, self.event_id, self.time = key, event_id, time
        self.name = event.__name__

    def numeric(self, field: str) -> bool:
        return self.kinds.get(field) == "number"

    def validate(self, key: bytes | None, value: bytes | None, keyed: bool = False) -> Any:
        """One record's event (fields as attributes), or why it is none (an :class:`Invalid`).

        ``keyed``: the record must have a key (on a topic; a file's lines have none).
        """
        if value is None:
            return Invalid("decode", "EmptyRecord", "the record has no value (a tombstone)")
        size = len(value) + (len(key) if key else 0)
        if size > MAX_RECORD_BYTES:
            return Invalid(
                "decode", "RecordTooLarge", f"{size} bytes; at most {MAX_RECORD_BYTES} allowed"
            )
        event: Any = None
        if self.fast is not None:
            try:
                event = self.fast.decode(value)
                value.decode()  # msgspec skips unknown fields without checking their UTF-8
            except _REFUSALS:
                event = None  # pydantic decides, and says why
        if event is None:
            event = self.careful(value)
            if isinstance(event, Invalid):
                return event
        entity = getattr(event, self.key)
        if (key is None and keyed) or (
            key is not None and key != entity.encode("utf-8", "surrogatepass")
        ):
            shown = "no key" if key is None else f"key {key[:200]!r}"
            return Invalid(
                "validate", "KeyMismatch",
                f"the record has {shown}; it must be the UTF-8 bytes of {self.key} "
                f"{entity[:200]!r}",
            )  # fmt: skip
        return event

    def validate_many(
        self, keys: Sequence[bytes | None], values: Sequence[bytes | None]
    ) -> list[Any]:
        """Each record's event or :class:`Invalid`, as :meth:`validate` gives them.

        msgspec decodes the chunk in one C loop (resumed after a record it refuses), the
        patterns, UTF-8 and keys of what it accepted are checked in one call each; only
        the records refused somewhere go through :meth:`validate` one by one, for their
        reasons. A record's fate never depends on its neighbours.
        """
        fast = self.fast
        one_by_one = itertools.repeat(True)
        if fast is None or not values or None in values:
            return list(map(self.validate, keys, values, one_by_one))
        if max(map(len, values)) + max(map(len, filter(None, keys)), default=0) > (  # type: ignore[arg-type]
            MAX_RECORD_BYTES
        ):
            return list(map(self.validate, keys, values, one_by_one))
        decode = fast.decoder.decode
        items: list[Any] = []
        refused = 0
        while len(items) < len(values):
            try:  # extend() keeps what it decoded before a refusal: resume after that one
                items.extend(map(decode, itertools.islice(values, len(items), None)))  # type: ignore[arg-type]
            except _REFUSALS:
                items.append(_REFUSED)
                refused += 1
        every = not refused
        rows = range(len(items)) if every else [i for i, x in enumerate(items) if x is not _REFUSED]
        accepted = items if every else [items[i] for i in rows]
        texts = values if every else [values[i] for i in rows]
        entities = map(operator.attrgetter(self.key), accepted)
        try:
            good = list(
                map(
                    operator.eq,
                    map(str.encode, entities),
                    keys if every else [keys[i] for i in rows],
                )
            )
        except UnicodeEncodeError:  # an entity with a lone surrogate: each record says why
            return list(map(self.validate, keys, values, one_by_one))
        for name, pattern in fast.patterns:
            matched = map(pattern.fullmatch, map(operator.attrgetter(name), accepted))
            good = list(map(operator.and_, good, map(operator.is_not, matched, _NONE)))
        try:  # values msgspec accepted begin and end in ASCII: none joins with a neighbour
            b"".join(texts).decode()  # type: ignore[arg-type]
        except UnicodeDecodeError:  # msgspec skips unknown fields without checking them
            good = list(map(operator.and_, good, map(_is_utf8, texts)))
        if every and all(good):
            return items
        out = [_REFUSED] * len(items)
        for row, item, ok in zip(rows, accepted, good, strict=True):
            if ok:
                out[row] = item
        return [
            self.validate(keys[i], values[i], True) if item is _REFUSED else item
            for i, item in enumerate(out)
        ]

    def careful(self, value: bytes) -> BaseModel | Invalid:
        """The careful path: strict JSON (orjson: UTF-8, no NaN, no lone surrogate, numbers
        a double holds), then the model. A value that is not such JSON is a ``decode``
        fault; JSON the model refuses (not an object included) a ``validate`` one."""
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Invalid("decode", "JSONDecodeError", str(exc)[:1024])
        if type(document) is not dict:
            return Invalid(
                "validate", "NotAnObject", f"the value is JSON {type(document).__name__}, "
                "not an object",
            )  # fmt: skip
        try:
            return self.model.model_validate(document)
        except ValidationError as exc:
            return Invalid("validate", "ValidationError", _one_line(exc))

    def columns(self, events: Sequence[Any]) -> Columns:
        """Each field of ``events`` as an array (numbers float64, NaN when absent), made
        the first time it is read: a field no stage and no feature reads costs nothing."""
        return Columns(events, self.kinds)


class Columns(Mapping[str, Column]):
    """A chunk's fields as columns, each built on first use (one C loop per field)."""

    __slots__ = ("_built", "_events", "_kinds")

    def __init__(self, events: Sequence[Any], kinds: Mapping[str, str]) -> None:
        self._events = events
        self._kinds = kinds
        self._built: dict[str, Column] = {}

    def __getitem__(self, name: str) -> Column:
        column = self._built.get(name)
        if column is None:
            kind = self._kinds[name]  # KeyError for a name that is not a field
            column = self._built[name] = _column(self._events, name, kind)
        return column

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds


def _column(events: Sequence[Any], name: str, kind: str) -> Column:
    values = list(map(operator.attrgetter(name), events))
    if kind == "number":
        try:  # numpy reads None as NaN, booleans as 0 and 1
            return np.array(values, dtype=np.float64)
        except (OverflowError, TypeError, ValueError):  # an int beyond a double
            return np.array([np.nan if v is None else float(v) for v in values], np.float64)
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _one_line(exc: ValidationError) -> str:
    """Every fault of a refused event, ``field: reason``, on one line (the header's 1 KiB)."""
    errors = exc.errors(include_url=False, include_input=False)
    text = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in errors)
    return text[:1024]
