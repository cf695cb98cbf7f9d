"""Inference off the loop: poison events are isolated, their neighbours still scored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.registry import resolve
from pipelines.fraud.artifact import load_artifact
from pipelines.fraud.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, RawFeatures
from streams.errors import ConfigError, NonFiniteScore
from streams.scoring.inference import Inference, resolve_device

POISON, NOT_A_NUMBER = 666.0, 777.0


class PoisonedModel:
    """Raises for a batch holding a poison row; returns NaN for another marker."""

    name, version, device = "fake", "1", torch.device("cpu")

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, raw: RawFeatures) -> np.ndarray:
        self.calls += 1
        first = raw.numeric[:, 0]
        if np.any(first == POISON):
            raise RuntimeError("poison in this batch")
        scores = 1.0 / (1.0 + np.exp(-np.clip(first, -50, 50)))
        scores[first == NOT_A_NUMBER] = np.nan
        return scores.astype(np.float32)


def raw_with(values: list[float]) -> RawFeatures:
    numeric = np.zeros((len(values), len(NUMERIC_FEATURES)), dtype=np.float32)
    numeric[:, 0] = values
    return RawFeatures(numeric, tuple(["x"] * len(values) for _ in CATEGORICAL_FEATURES))


async def test_a_failing_batch_is_split_until_only_the_poison_events_fail() -> None:
    model = PoisonedModel()
    inference = Inference(model)  # type: ignore[arg-type]
    values = [0.0] * 64
    values[5] = values[40] = POISON
    values[10] = NOT_A_NUMBER
    scored = await inference.score(raw_with(values))
    inference.close()
    assert set(scored.failures) == {5, 10, 40}
    assert isinstance(scored.failures[5], RuntimeError)
    assert isinstance(scored.failures[10], NonFiniteScore)
    ok = [i for i in range(64) if i not in scored.failures]
    assert np.allclose(scored.scores[ok], 0.5)
    assert model.calls <= 2 * 2 * 6 + 1  # bisection: a few calls per poison event, not 64


async def test_the_packaged_model_warms_up_and_scores_in_range() -> None:
    inference = Inference(load_artifact(resolve(None, None), torch.device("cpu")))
    await inference.warm_up((1, 8))
    raw = raw_with([1.0, 2.0, 3.0])
    raw.numeric[:, 1:] = np.nan  # every other feature unknown: imputed
    scored = await inference.score(raw)
    inference.close()
    assert scored.failures == {}
    assert scored.scores.shape == (3,)
    assert np.all((scored.scores >= 0) & (scored.scores <= 1))
    assert scored.seconds > 0


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda:0")
