"""Shared fixtures of the model-layer tests: one small trained artifact per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.fraud.train import TrainReport, train

SmallTrainer = Callable[..., TrainReport]


def _train_small(output: Path, seed: int = 11, hidden: tuple[int, ...] = (64, 32)) -> TrainReport:
    return train(seed=seed, output=output, n_events=8_000, n_entities=300, epochs=3, hidden=hidden)


@pytest.fixture(scope="session")
def train_small() -> SmallTrainer:
    """Trains a model small enough for about a second, large enough to learn something."""
    return _train_small


@pytest.fixture(scope="session")
def small_report(tmp_path_factory: pytest.TempPathFactory) -> TrainReport:
    return _train_small(tmp_path_factory.mktemp("small") / "fraud-small")


@pytest.fixture(scope="session")
def small_artifact(small_report: TrainReport) -> Path:
    return small_report.path
