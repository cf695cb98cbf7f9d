"""Wire schema of what the product publishes on the scores (and shadow) topic."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import NonEmptyStr

Route = Literal["primary", "canary", "escalated", "fallback", "default", "shadow"]


class Source(BaseModel):
    """Where the scored event was consumed: the same for a duplicate after a crash."""

    model_config = ConfigDict(strict=True, frozen=True)

    topic: NonEmptyStr
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]


class Score(BaseModel):
    """One score per valid event, keyed like the event."""

    model_config = ConfigDict(strict=True, frozen=True, allow_inf_nan=False)

    event_id: NonEmptyStr
    entity_id: NonEmptyStr
    score: Annotated[float, Field(ge=0.0, le=1.0)]
    model: NonEmptyStr
    model_version: NonEmptyStr
    degraded: bool
    event_ts: float
    scored_ts: float
    source: Source
    route: Route | None = None
