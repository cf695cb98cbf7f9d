"""Wire schema of what the product publishes on the scores (and shadow) topic."""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
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


class ScoreEncoder:
    """Writes the JSON of :class:`Score` for one producing rung, without a dict per event.

    What is constant for a rung (model, version, degraded, route) is encoded once into a
    ``%``-template; per event only two JSON strings, two floats and two integers are
    formatted, half the cost of building and serialising a dict. The output parses to
    exactly what ``Score(...).model_dump()`` would give (tests compare the two).
    """

    __slots__ = ("_template", "_topics")

    def __init__(self, model: str, model_version: str, degraded: bool, route: str) -> None:
        constant = orjson.dumps(
            {"model": model, "model_version": model_version, "degraded": degraded, "route": route}
        ).decode()[1:-1]
        self._template = (
            '{"event_id":%s,"entity_id":%s,"score":%r,'
            + constant.replace("%", "%%")
            + ',"event_ts":%r,"scored_ts":%r,"source":{"topic":%s,"partition":%d,"offset":%d}}'
        )
        self._topics: dict[str, str] = {}

    def encode(
        self,
        event_id: str,
        entity_id: str,
        score: float,
        event_ts: float,
        scored_ts: float,
        topic: str,
        partition: int,
        offset: int,
    ) -> bytes:
        """One score's value; the floats must be finite (scores and validated event times are)."""
        quoted = self._topics.get(topic)
        if quoted is None:
            quoted = self._topics[topic] = orjson.dumps(topic).decode()
        return (
            self._template
            % (
                orjson.dumps(event_id).decode(),
                orjson.dumps(entity_id).decode(),
                float(score),
                float(event_ts),
                float(scored_ts),
                quoted,
                partition,
                offset,
            )
        ).encode()
