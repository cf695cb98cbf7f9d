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

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["PLAN_KEY", "Canary", "ModelRef", "PlanError", "RolloutPlan", "RoutingRule"]

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


class RoutingRule(BaseModel):
    """Events matching every condition given go to ``model`` (``STREAMSCORE_ROUTING_RULES``).

    An operator's setting, not a wire record: unknown fields are refused, so a
    misspelt condition fails at start instead of matching everything.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: ModelRef
    channels: frozenset[Literal["web", "pos", "app"]] | None = None
    countries: frozenset[Annotated[str, Field(pattern=r"^[A-Z]{2}$")]] | None = None
    currencies: frozenset[Annotated[str, Field(pattern=r"^[A-Z]{3}$")]] | None = None
    min_amount: Annotated[float, Field(ge=0.0)] | None = None
    max_amount: Annotated[float, Field(ge=0.0)] | None = None

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether a validated event meets every condition of the rule."""
        amount = event["amount"]
        return (
            (self.channels is None or event["channel"] in self.channels)
            and (self.countries is None or event["country"] in self.countries)
            and (self.currencies is None or event["currency"] in self.currencies)
            and (self.min_amount is None or amount >= self.min_amount)
            and (self.max_amount is None or amount < self.max_amount)
        )


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
