"""Wire schemas every pipeline shares: profile feature updates, and what bounds a record.

A pipeline's own event schema lives with the pipeline (the default one's in
:mod:`pipelines.fraud.events`); the features topic and the record limits are
the same for all of them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

#: A record (key + value) larger than this is malformed.
MAX_RECORD_BYTES = 64 * 1024

#: Most profile features one update may carry.
MAX_PROFILE_FEATURES = 256

NonEmptyStr = Annotated[str, Field(min_length=1)]

#: How every wire schema validates: strict types, finite numbers, unknown fields ignored.
WIRE = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")

ProfileValue = Annotated[float, Field(allow_inf_nan=False)] | None


class FeatureUpdate(BaseModel):
    """A complete profile of numeric features for one entity (replaces the previous one).

    Every field other than ``entity_id`` is a feature: a finite number, or
    ``null`` for "unknown". A feature left out is unknown too and is imputed
    by the model.
    """

    model_config = ConfigDict(**{**WIRE, "extra": "allow"}, frozen=True)
    __pydantic_extra__: dict[Annotated[str, Field(min_length=1, max_length=128)], ProfileValue]

    entity_id: NonEmptyStr

    def features(self) -> dict[str, float]:
        """The known features (``null`` ones left out, i.e. imputed)."""
        extra = self.__pydantic_extra__ or {}
        if len(extra) > MAX_PROFILE_FEATURES:  # also enforced by the decoder
            raise ValueError(f"more than {MAX_PROFILE_FEATURES} features")
        return {name: float(value) for name, value in extra.items() if value is not None}


FEATURE_UPDATES: TypeAdapter[list[FeatureUpdate]] = TypeAdapter(list[FeatureUpdate])
