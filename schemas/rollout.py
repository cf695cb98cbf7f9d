"""Wire schema of the rollout plan: the one record (key ``plan``) on the control topic.

Every worker of a group follows the latest plan, so its shape is part of the
contract: ``primary`` (a model reference), ``canary`` (``model`` and
``percent``, or null), ``shadow`` (a reference or null), ``updated_ts`` (epoch
seconds) and ``reason``. References are ``NAME:VERSION`` or ``NAME``, never
paths: a plan is read by workers on other machines.

Unknown fields are ignored rather than refused, so a newer writer that adds an
optional field does not make older workers drop the whole plan.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

__all__ = [
    "PLAN_KEY", "Canary", "Condition", "ModelRef", "PlanError", "RolloutPlan", "RoutingRule"
]  # fmt: skip

#: Record key of the plan on the control topic (compacted: the last value wins).
PLAN_KEY = b"plan"

#: ``NAME`` or ``NAME:VERSION``, as in :mod:`models.registry` (which resolves it).
ModelRef = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,63}(:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$",
        description="model reference: NAME:VERSION, or NAME for its highest version",
    ),
]

_WIRE = ConfigDict(strict=True, frozen=True, extra="ignore", allow_inf_nan=False)


class PlanError(ValueError):
    """Bytes on the control topic that are not a rollout plan. Write a new plan to replace it."""


class Canary(BaseModel):
    """A model that takes ``percent`` of the entities (by a stable hash of ``entity_id``)."""

    model_config = _WIRE

    model: ModelRef
    percent: Annotated[float, Field(gt=0.0, le=100.0)]


class RolloutPlan(BaseModel):
    """Which model scores, which one is tried on a share of traffic, which one runs alongside."""

    model_config = _WIRE

    primary: ModelRef
    canary: Canary | None
    shadow: ModelRef | None
    updated_ts: Annotated[float, Field(ge=0.0, description="epoch seconds of the write")]
    reason: str

    def to_bytes(self) -> bytes:
        """The record value: compact UTF-8 JSON with the contract's field names."""
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview | None) -> RolloutPlan:
        """Parse a record value; anything else raises :class:`PlanError` with one line."""
        if data is None:
            raise PlanError("the plan record has no value (a tombstone)")
        try:
            return cls.model_validate_json(bytes(data))
        except ValidationError as exc:
            raise PlanError(f"not a rollout plan: {_describe(exc)}") from exc


#: A value a condition compares a field with (JSON scalars; a bool is not a number here).
Scalar = StrictBool | StrictInt | StrictFloat | StrictStr


class Condition(BaseModel):
    """What one field of an event must be: equal to ``eq``, one of ``in``, within bounds.

    In a rule, a bare value is ``{"eq": value}`` and a list is ``{"in": list}``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    eq: Scalar | None = None
    in_: frozenset[Scalar] | None = Field(None, alias="in")
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, list | tuple | set | frozenset):
            return {"in": value}
        if value is None or isinstance(value, bool | int | float | str):
            return {"eq": value}
        return value

    @model_validator(mode="after")
    def _something(self) -> Condition:
        if self.eq is None and self.in_ is None and not self.bounds:
            raise ValueError("a condition needs eq, in, gte, gt, lte or lt")
        if self.eq is not None and self.in_ is not None:
            raise ValueError("give eq or in, not both")
        if self.in_ is not None and not self.in_:
            raise ValueError("in: an empty list matches nothing")
        return self

    @property
    def bounds(self) -> list[tuple[str, float]]:
        """The bounds given, as ``(operator, value)`` pairs."""
        return [
            (op, v) for op in ("gte", "gt", "lte", "lt") if (v := getattr(self, op)) is not None
        ]

    @property
    def allowed(self) -> frozenset[Any] | None:
        """The values the field may take (None: any)."""
        return frozenset((self.eq,)) if self.eq is not None else self.in_


class RoutingRule(BaseModel):
    """Events meeting every condition of ``where`` go to ``model`` (``STREAMSCORE_ROUTING_RULES``).

    Conditions name fields of the served pipeline's event, and are checked
    against it when a worker starts. An operator's setting, not a wire record:
    unknown keys are refused, so a misspelt condition fails at start instead of
    matching everything.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: ModelRef
    where: Annotated[dict[str, Condition], Field(min_length=1)]

    def mask(self, column: Callable[[str], Sequence[Any]], n: int) -> npt.NDArray[np.bool_]:
        """Which of ``n`` events match: ``column(field)`` gives one field of all of them.

        Evaluated on whole columns: one pass per condition, not one call per event.
        """
        keep = np.ones(n, dtype=np.bool_)
        for field, condition in self.where.items():
            values = column(field)
            allowed = condition.allowed
            if allowed is not None:
                keep &= np.fromiter((v in allowed for v in values), np.bool_, n)
            if condition.bounds:
                numbers = np.array(values, dtype=np.float64)  # None (absent): NaN, never matches
                with np.errstate(invalid="ignore"):
                    for op, bound in condition.bounds:
                        keep &= _COMPARE[op](numbers, bound)
        return keep


_COMPARE: dict[str, Callable[[Any, float], Any]] = {
    "gte": operator.ge, "gt": operator.gt, "lte": operator.le, "lt": operator.lt
}  # fmt: skip


def _describe(exc: ValidationError) -> str:
    """One line naming the first few bad fields."""
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts).replace("\n", " ")
