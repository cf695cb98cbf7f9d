"""What escalation costs and buys: a cascade of two models on a held-out synthetic set.

The first model scores every event; events whose score falls in the band are
scored again by the escalation model, whose score replaces the first (what
the worker's router does with ``STREAMSCORE_ESCALATION_MODEL``). Reported: the
AUC of each model alone and of the cascade, the share escalated, and model
throughput (events/s of model time, batches of 256, one thread) with and
without escalation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from pipelines.fraud.artifact import LoadedModel, load_artifact
from pipelines.fraud.features import RawFeatures
from pipelines.fraud.synthetic import SyntheticWorld
from pipelines.fraud.train import auc, build_features

__all__ = ["CascadeReport", "evaluate_cascade"]

_BATCH = 256


@dataclass(frozen=True, slots=True)
class CascadeReport:
    events: int
    fraud_rate: float
    band: tuple[float, float]
    escalated_share: float
    auc_first: float
    auc_escalation: float
    auc_cascade: float
    rate_first: float  # events/s, first model alone
    rate_escalation: float  # events/s, escalation model on every event
    rate_cascade: float  # events/s, first model on all plus escalation on the band


def _score(model: LoadedModel, raw: RawFeatures) -> tuple[npt.NDArray[np.float32], float]:
    """Scores in batches of 256, and the seconds they took."""
    out = []
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(raw), _BATCH):
            out.append(model.predict(raw.take(start, min(start + _BATCH, len(raw)))))
    return np.concatenate(out), time.perf_counter() - started


def evaluate_cascade(
    first: Path,
    escalation: Path,
    band: tuple[float, float],
    *,
    seed: int = 101,
    n_events: int = 50_000,
    n_entities: int = 2_000,
) -> CascadeReport:
    """Evaluate on a synthetic world of its own seed (not one the models were trained on)."""
    world = SyntheticWorld(seed, n_entities=n_entities)
    labeled = world.events(n_events)
    raw = build_features([e.event for e in labeled], world.feature_table())
    y = np.fromiter((e.is_fraud for e in labeled), dtype=np.float32, count=len(labeled))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = load_artifact(first), load_artifact(escalation)
        _score(a, raw.take(0, min(len(raw), 2 * _BATCH)))  # warm both up
        _score(b, raw.take(0, min(len(raw), 2 * _BATCH)))
        first_scores, first_seconds = _score(a, raw)
        deep_scores, deep_seconds = _score(b, raw)
        low, high = band
        rows = np.flatnonzero((first_scores >= low) & (first_scores <= high))
        cascade = first_scores.astype(np.float64)
        band_seconds = 0.0
        if len(rows):
            rescored, band_seconds = _score(b, raw.select(rows.tolist()))
            cascade[rows] = rescored
    finally:
        torch.set_num_threads(threads)
    n = len(raw)
    return CascadeReport(
        events=n,
        fraud_rate=float(y.mean()),
        band=band,
        escalated_share=len(rows) / n,
        auc_first=auc(y, first_scores),
        auc_escalation=auc(y, deep_scores),
        auc_cascade=auc(y, cascade),
        rate_first=n / first_seconds,
        rate_escalation=n / deep_seconds,
        rate_cascade=n / (first_seconds + band_seconds),
    )
