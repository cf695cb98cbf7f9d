"""Pydantic wire schemas every pipeline shares: what crosses Kafka topics, and nothing else.

A pipeline's event schema is its own (the default one's: :mod:`pipelines.fraud.events`).
"""

from schemas.profiles import FeatureUpdate
from schemas.scores import Score, Source

__all__ = ["FeatureUpdate", "Score", "Source"]
