"""Training: the AUC metric, reproducibility, and that it learns."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models.artifact import MANIFEST
from pipelines.fraud.artifact import WEIGHTS, load_artifact
from pipelines.fraud.train import TrainReport, auc


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y], s[~y]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def test_auc_known_values() -> None:
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auc([0, 1, 1], [0.3, 0.3, 0.9]) == 0.75


def test_auc_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.2
    s = np.round(rng.random(400) + 0.3 * y, 1)  # coarse: many ties
    assert auc(y, s) == pytest.approx(_pairwise_auc(y, s))


def test_auc_refuses_degenerate_input() -> None:
    with pytest.raises(ValueError, match="both"):
        auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.2, float("nan")])
    with pytest.raises(ValueError, match="labels"):
        auc([0, 1, 1], [0.2, 0.3])


def test_training_is_reproducible_and_learns(
    small_report: TrainReport, train_small: Callable[..., TrainReport], tmp_path: Path
) -> None:
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    again = train_small(tmp_path / "again")
    assert (again.path / WEIGHTS).read_bytes() == (small_report.path / WEIGHTS).read_bytes()
    assert (again.path / MANIFEST).read_bytes() == (small_report.path / MANIFEST).read_bytes()
    assert again.auc == small_report.auc
    assert small_report.auc > 0.75
    assert small_report.n_train == 6_400
    assert small_report.n_test == 1_600
    assert 0.01 < small_report.fraud_rate < 0.06
    # the process-wide torch settings are put back
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    metrics = load_artifact(small_report.path).manifest.metrics
    assert metrics["auc"] == round(small_report.auc, 6)
    assert metrics["seed"] == 11


def test_other_seed_other_weights(
    small_report: TrainReport, train_small: Callable[..., TrainReport], tmp_path: Path
) -> None:
    other = train_small(tmp_path / "other", seed=12)
    assert (other.path / WEIGHTS).read_bytes() != (small_report.path / WEIGHTS).read_bytes()


def test_logistic_fallback_trains(train_small: Callable[..., TrainReport], tmp_path: Path) -> None:
    report = train_small(tmp_path / "lr", hidden=())
    model = load_artifact(report.path)
    assert model.manifest.architecture.hidden == ()
    assert sum(p.numel() for p in model.module.parameters()) == model.preprocessor.width + 1
    assert report.auc > 0.75
