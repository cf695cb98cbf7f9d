"""``fraud``, the default pipeline: card and account events scored for fraud, in one package.

Its event (:mod:`pipelines.fraud.events`), its per-account history and feature
catalogue (:mod:`pipelines.fraud.features`), its model family
(:mod:`pipelines.fraud.model`) and model format (:mod:`pipelines.fraud.artifact`,
with the preprocessing each model stores, :mod:`pipelines.fraud.preprocess`), the
synthetic world it is trained and demonstrated on (:mod:`pipelines.fraud.synthetic`),
its training (:mod:`pipelines.fraud.train`) and its packaged models (``artifacts/``).
Declared with the public API, as a team's own pipeline would be: the worker,
``pipeline check`` and ``pipeline features`` serve it through the same code as any.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.formats import ModelFormat
from pipelines.fraud.events import Event
from pipelines.fraud.features import (
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    PROFILE_FEATURES,
    STATE,
    features,
)
from streams.pipeline import Pipeline, Tensor

if TYPE_CHECKING:
    import torch

    from models.execution import ExecutionOptions
    from pipelines.fraud.artifact import LoadedModel, Manifest

__all__ = ["FORMAT", "Event", "pipeline"]


# The format's functions import torch and the synthetic world only when a model is read.
def _read(directory: Path) -> Manifest:
    from pipelines.fraud.artifact import read_manifest

    return read_manifest(directory)


def _load(directory: Path, device: torch.device, execution: ExecutionOptions | None) -> LoadedModel:
    from pipelines.fraud.artifact import load_artifact

    return load_artifact(directory, device, execution)


def _vet(model: Any) -> None:
    from pipelines.fraud.smoke import check_smoke

    check_smoke(model)


#: Fraud models: a manifest with their preprocessing beside safetensors weights of a
#: FraudMLP; ``models add`` also runs them on a realistic smoke batch.
FORMAT = ModelFormat(read=_read, load=_load, vet=_vet)


def sample() -> list[bytes]:
    """``streamscore demo --pipeline fraud --input``-less replay: synthetic events, in order."""
    import orjson

    from pipelines.fraud.synthetic import SyntheticWorld

    world = SyntheticWorld(7)
    return [orjson.dumps(labeled.event) for labeled in world.events(20_000)]


pipeline = Pipeline(
    name="fraud",
    description="P(fraud) of each card or account event (synthetic world)",
    event=Event,
    key="entity_id",
    event_id="event_id",
    time="ts",
    state=STATE,
    profile=PROFILE_FEATURES,
    features=features,
    inputs={
        # NaN: unknown (no profile, no history yet); each model imputes it as its manifest says.
        "numeric": Tensor("float32", (len(NUMERIC_FEATURES),), finite=False),
        # The channel's index; the country's and currency's letters in base 26 (-1: other).
        "categorical": Tensor("int64", (len(CATEGORICAL_FEATURES),)),
    },
    model="fraud-mlp:1",
    fallback="fraud-lr:1",
    model_format=FORMAT,
    sample=sample,
)
