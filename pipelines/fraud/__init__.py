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
from streams.pipeline import Pipeline, PipelineError, Tensor, Traffic

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


#: What ``streamscore train --architecture`` builds: model name and hidden layer widths.
ARCHITECTURES: dict[str, tuple[str, tuple[int, ...]]] = {
    "mlp": ("fraud-mlp", (64, 32)),  # the primary model
    "logistic": ("fraud-lr", ()),  # the lighter fallback of the ladder
    "deep": ("fraud-deep", (256, 128, 64)),  # heavier, for escalation
}


def train(
    output: Path, seed: int, *, version: str = "1", architecture: str = "mlp"
) -> dict[str, float]:
    """``streamscore train``: one model trained on a fresh synthetic world, written as the
    artifact directory ``output`` (the packaged artifacts folder: the packaged
    ``NAME/VERSION`` in it, regenerated). See :mod:`pipelines.fraud.train`."""
    from pipelines.fraud.artifact import packaged_artifacts_dir
    from pipelines.fraud.train import train as run

    if architecture not in ARCHITECTURES:
        raise PipelineError(
            f"architecture {architecture!r}: the fraud pipeline trains {', '.join(ARCHITECTURES)}"
        )
    name, hidden = ARCHITECTURES[architecture]
    packaged = Path(output).resolve() == packaged_artifacts_dir().resolve()
    report = run(
        seed=seed, version=version, output=None if packaged else Path(output), name=name,
        hidden=hidden,
    )  # fmt: skip
    return {
        "AUC": report.auc,
        "held-out events": report.n_test,
        "training events": report.n_train,
        "fraud rate": report.fraud_rate,
    }


def traffic(entities: int, seed: int) -> Traffic:
    """``streamscore demo`` and ``produce``: the synthetic world's profiles and events."""
    from pipelines.fraud.synthetic import SyntheticTraffic

    return SyntheticTraffic(entities, seed)


def sample() -> list[bytes]:
    """What the bench's stage probe replays (``benchmarks.pipeline_probe``): 20,000
    synthetic events, in order."""
    return [value for _, value in traffic(1_000, 7).events(20_000)]


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
    trainer=train,
    sample=sample,
    traffic=traffic,
)
