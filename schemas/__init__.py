"""Pydantic wire schemas: what crosses Kafka topics, and nothing else."""

from schemas.events import Event, EventRecord, FeatureUpdate
from schemas.scores import Score, Source

__all__ = ["Event", "EventRecord", "FeatureUpdate", "Score", "Source"]
