"""Per-entity state a pipeline declares: online aggregates and a window of recent events.

Declared once, as values::

    state = {
        "purchases": Count(),
        "spend": Sum("dollars"),
        "mean_spend": Mean("dollars", half_life=90 * 86_400),
        "largest": Max("dollars"),
        "last_dollars": Last("dollars"),
        "gap": SincePrevious(),
    }
    window = Window(20, fields=("dollars", "cds", "ts"))

Each entity's state is one fixed-size record (a numpy structured dtype, the
:class:`StateLayout`), so a chunk's states are read with one multi-get and
decoded with one ``frombuffer``, and written back with one ``tobytes``. The
record carries the offset of the last event it counts (a redelivered event
never counts twice; an older one never rolls it back) and a fingerprint of the
declaration: a record written under another declaration cannot be decoded and
is treated as unreadable (the event is scored degraded, the state starts over).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from streams.pipeline.errors import PipelineError

__all__ = [
    "Aggregate",
    "Count",
    "Last",
    "Max",
    "Mean",
    "Min",
    "SincePrevious",
    "StateLayout",
    "Sum",
    "Window",
]

#: Largest window a pipeline may declare (events kept per entity).
MAX_WINDOW = 1_024


@dataclass(frozen=True)
class Aggregate:
    """One online aggregate over an event field; the value an event sees is the one before it."""

    field: str | None = None
    half_life: float | None = None  # seconds; None: no decay
    #: What the aggregate keeps (its columns in the state record).
    kind: ClassVar[str] = ""
    decays: ClassVar[bool] = False  # whether a half-life makes sense for it
    needs_field: ClassVar[bool] = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.needs_field and not self.field:
            raise PipelineError(f"{name}() needs the event field it aggregates, e.g. {name}('x')")
        if not self.needs_field and self.field is not None:
            raise PipelineError(f"{name}() takes no field")
        if self.half_life is not None:
            if not self.decays:
                raise PipelineError(
                    f"{name}: half_life applies to Count, Sum and Mean only (a decayed "
                    f"{name.lower()} has no meaning)"
                )
            if not (math.isfinite(self.half_life) and self.half_life > 0):
                raise PipelineError(f"{name}: half_life must be a positive number of seconds")


@dataclass(frozen=True)
class Count(Aggregate):
    """How many events of the entity came before (decayed: their total weight)."""

    kind: ClassVar[str] = "count"
    decays: ClassVar[bool] = True
    needs_field: ClassVar[bool] = False


@dataclass(frozen=True)
class Sum(Aggregate):
    """The sum of ``field`` over the entity's earlier events (0 when none)."""

    kind: ClassVar[str] = "sum"
    decays: ClassVar[bool] = True

    def __init__(self, field: str, *, half_life: float | None = None) -> None:
        super().__init__(field, half_life)


@dataclass(frozen=True)
class Mean(Aggregate):
    """The mean of ``field`` over the entity's earlier events (NaN when none)."""

    kind: ClassVar[str] = "mean"
    decays: ClassVar[bool] = True

    def __init__(self, field: str, *, half_life: float | None = None) -> None:
        super().__init__(field, half_life)


@dataclass(frozen=True)
class Min(Aggregate):
    """The smallest ``field`` of the entity's earlier events (NaN when none)."""

    kind: ClassVar[str] = "min"

    def __init__(self, field: str) -> None:
        super().__init__(field, None)


@dataclass(frozen=True)
class Max(Aggregate):
    """The largest ``field`` of the entity's earlier events (NaN when none)."""

    kind: ClassVar[str] = "max"

    def __init__(self, field: str) -> None:
        super().__init__(field, None)


@dataclass(frozen=True)
class Last(Aggregate):
    """``field`` of the entity's previous event (NaN when none)."""

    kind: ClassVar[str] = "last"

    def __init__(self, field: str) -> None:
        super().__init__(field, None)


@dataclass(frozen=True)
class SincePrevious(Aggregate):
    """Seconds since the entity's latest earlier event (NaN when none, or for a redelivery)."""

    kind: ClassVar[str] = "since"
    needs_field: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__(None, None)


# Count(), Sum("x", half_life=...) etc. are built through these __init__s; Count keeps the
# dataclass one (no field, optional half_life).


@dataclass(frozen=True)
class Window:
    """The entity's last ``size`` events (these numeric ``fields``), most recent last."""

    size: int
    fields: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 1 <= self.size <= MAX_WINDOW:
            raise PipelineError(f"Window size must be an integer from 1 to {MAX_WINDOW}")
        if not self.fields:
            raise PipelineError("Window needs the event fields it keeps, e.g. fields=('dollars',)")
        if len(set(self.fields)) != len(self.fields):
            raise PipelineError(f"Window fields listed twice: {self.fields}")
        object.__setattr__(self, "fields", tuple(self.fields))


def _columns(name: str, aggregate: Aggregate) -> list[str]:
    """The float64 columns of the state record ``aggregate`` keeps."""
    if aggregate.kind == "mean":
        return [f"{name}.sum", f"{name}.weight"]
    if aggregate.kind == "since":
        return []  # the record's last_time is enough
    return [f"{name}.value"]


class StateLayout:
    """The fixed-size record of one entity's state under a declaration."""

    VERSION = 1

    def __init__(self, aggregates: Mapping[str, Aggregate], window: Window | None) -> None:
        for name, aggregate in aggregates.items():
            if not isinstance(aggregate, Aggregate):
                raise PipelineError(
                    f"state {name!r} is {aggregate!r}, not an aggregate (Count(), Sum('x'), ...)"
                )
            if not name.isidentifier():
                raise PipelineError(f"state name {name!r} must be an identifier")
        self.aggregates: dict[str, Aggregate] = dict(aggregates)
        self.window = window
        fields: list[tuple[str, object] | tuple[str, object, tuple[int, ...]]] = [
            ("fingerprint", "<u4"),
            ("seen", "<i8"),  # events counted (not decayed)
            ("last_offset", "<i8"),
            ("last_time", "<f8"),  # the latest event time seen
        ]
        for name, aggregate in self.aggregates.items():
            fields += [(column, "<f8") for column in _columns(name, aggregate)]
        if window is not None:
            fields.append(("window", "<f8", (window.size, len(window.fields))))
        self.dtype = np.dtype(fields)
        description = repr(
            (self.VERSION, sorted((n, type(a).__name__, a.field, a.half_life)
                                  for n, a in self.aggregates.items()),
             None if window is None else (window.size, window.fields))
        )  # fmt: skip
        digest = hashlib.blake2b(description.encode(), digest_size=4).digest()
        self.fingerprint = int.from_bytes(digest, "little")

    @property
    def size(self) -> int:
        """Bytes of one record."""
        return int(self.dtype.itemsize)

    @property
    def fields(self) -> list[str]:
        """The event fields the state reads (aggregates and window), in a fixed order."""
        used = [a.field for a in self.aggregates.values() if a.field is not None]
        if self.window is not None:
            used += list(self.window.fields)
        return list(dict.fromkeys(used))

    def empty(self, n: int) -> npt.NDArray[np.void]:
        """``n`` records of entities never seen."""
        records = np.zeros(n, dtype=self.dtype)
        records["fingerprint"] = self.fingerprint
        records["last_offset"] = -1
        records["last_time"] = -np.inf
        for name, aggregate in self.aggregates.items():
            if aggregate.kind == "min":
                records[f"{name}.value"] = np.inf
            elif aggregate.kind == "max":
                records[f"{name}.value"] = -np.inf
            elif aggregate.kind == "last":
                records[f"{name}.value"] = np.nan
        return records

    def decode(
        self, values: Sequence[bytes | None]
    ) -> tuple[npt.NDArray[np.void], npt.NDArray[np.bool_]]:
        """Records for stored ``values`` (None: never seen), and which could not be decoded.

        An undecodable value (another size or fingerprint: corrupt, or written under
        another declaration) is returned as never seen and marked.
        """
        n = len(values)
        records = self.empty(n)
        bad = np.zeros(n, dtype=np.bool_)
        size = self.size
        present = [i for i, value in enumerate(values) if value is not None]
        if not present:
            return records, bad
        good = [i for i in present if len(values[i]) == size]  # type: ignore[arg-type]
        bad[[i for i in present if len(values[i]) != size]] = True  # type: ignore[arg-type]
        if good:
            stored = np.frombuffer(b"".join(values[i] for i in good), dtype=self.dtype)  # type: ignore[misc]
            matches = stored["fingerprint"] == self.fingerprint
            rows = np.asarray(good)
            records[rows[matches]] = stored[matches]
            bad[rows[~matches]] = True
        return records, bad

    def encode(self, records: npt.NDArray[np.void]) -> list[bytes]:
        """Each record's bytes (one copy of the whole array, then cut)."""
        data = np.ascontiguousarray(records, dtype=self.dtype).tobytes()
        size = self.size
        return [data[i : i + size] for i in range(0, len(data), size)]
