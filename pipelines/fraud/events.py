"""The fraud pipeline's event: what producers publish on its events topic.

Validated as every pipeline's event is (:mod:`streams.pipeline.events`): msgspec
reads a chunk in one C pass (the currency and country patterns are simple
enough to be checked over the chunk in one pass each), pydantic names the fault
of anything it refuses.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.profiles import WIRE, NonEmptyStr

EventTime = Annotated[float, Field(allow_inf_nan=False, description="epoch seconds")]
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217, upper case")]
Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
Channel = Literal["web", "pos", "app"]
CHANNELS: tuple[Channel, ...] = ("web", "pos", "app")


class Event(BaseModel):
    """One event on the events topic; the record key is the UTF-8 ``entity_id``."""

    model_config = ConfigDict(**WIRE, frozen=True)

    event_id: NonEmptyStr
    entity_id: NonEmptyStr
    ts: EventTime
    amount: Amount
    currency: Currency
    merchant: NonEmptyStr
    country: Country
    channel: Channel
