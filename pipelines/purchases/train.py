"""Training the purchases models, reproducibly, with a split by time.

Every purchase is featurized by the pipeline's own code (:func:`run_lines`, as
``pipeline features`` and the worker do), the whole log replayed by date. Its
label: the customer buys again, on a later day, within 90 days. Training takes
the purchases up to 1997-09-30 (their labels are known by the end of 1997);
evaluation the purchases of 1998-01-01 to 1998-03-31 (labels known before the
log ends on 1998-06-30). Three models are fitted on the same split and their
held-out ROC-AUC reported: the GRU over the last purchases plus aggregates, the
same network without the sequence, and a logistic regression on recency,
frequency and monetary value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.programs import save_program
from pipelines.purchases import pipeline
from pipelines.purchases.data import Log, events_jsonl, fetch, read_log, replay_order
from pipelines.purchases.features import DAY
from pipelines.purchases.model import PurchasesNet, RFMLogistic
from streams.pipeline.offline import run_lines

__all__ = ["HORIZON_DAYS", "Split", "roc_auc", "train"]

HORIZON_DAYS = 90
TRAIN_END = dt.datetime(1997, 10, 1, tzinfo=dt.UTC).timestamp()
EVAL_START = dt.datetime(1998, 1, 1, tzinfo=dt.UTC).timestamp()
EVAL_END = dt.datetime(1998, 4, 1, tzinfo=dt.UTC).timestamp()


def labels(log: Log, order: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Per purchase of ``order``: does the customer buy again on a later day within 90 days?"""
    customer, ts = log.customer[order].astype(np.float64), log.ts[order]
    keys = customer * 1e10 + ts  # exact in float64: ids < 1e5, times < 1e10 whole seconds
    by_key = np.argsort(keys, kind="stable")
    sorted_keys = keys[by_key]
    later = np.searchsorted(sorted_keys, keys, side="right")  # first purchase on a later day
    ok = later < len(keys)
    next_ts = np.full(len(keys), np.inf)
    same = ok.copy()
    same[ok] = customer[by_key[later[ok]]] == customer[ok]
    next_ts[same] = ts[by_key[later[same]]]
    return (next_ts - ts) <= HORIZON_DAYS * DAY


@dataclass(frozen=True)
class Split:
    sequence: npt.NDArray[np.float32]
    aggregates: npt.NDArray[np.float32]
    label: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.label)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.sequence), torch.from_numpy(self.aggregates)


def splits(log: Log) -> tuple[Split, Split]:
    """The training and evaluation purchases, featurized by replaying the whole log."""
    order = replay_order(log)
    chunks = list(run_lines(pipeline, events_jsonl(log, order)))
    sequence = np.concatenate([c.featurized.inputs["sequence"] for c in chunks if c.featurized])
    aggregates = np.concatenate([c.featurized.inputs["aggregates"] for c in chunks if c.featurized])
    if len(sequence) != len(order):
        raise RuntimeError("some purchases of the log did not validate")
    y = labels(log, order).astype(np.float32)
    ts = log.ts[order]
    train = ts < TRAIN_END
    held = (ts >= EVAL_START) & (ts < EVAL_END)
    return (
        Split(sequence[train], aggregates[train], y[train]),
        Split(sequence[held], aggregates[held], y[held]),
    )


def roc_auc(label: npt.NDArray[np.float32], score: npt.NDArray[np.float32]) -> float:
    """Area under the ROC curve (ties share their rank: the Mann-Whitney statistic)."""
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    positives = label > 0.5
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _standardise(module: nn.Module, columns: npt.NDArray[np.float32]) -> None:
    mean, scale = module.get_buffer("mean"), module.get_buffer("scale")
    mean.copy_(torch.from_numpy(columns.mean(axis=0)))
    scale.copy_(torch.from_numpy(columns.std(axis=0) + 1e-6))


def fit(
    module: nn.Module, data: Split, *, seed: int, epochs: int = 6, batch: int = 256
) -> nn.Module:
    """Adam on the binary cross-entropy, shuffled with ``seed``; the same run every time."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(module.parameters(), lr=3e-3)
    loss_fn = nn.BCELoss()
    sequence, aggregates = data.tensors()
    y = torch.from_numpy(data.label)
    module.train()
    for _ in range(epochs):
        shuffled = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), batch):
            rows = shuffled[start : start + batch]
            optimiser.zero_grad()
            loss = loss_fn(module(sequence[rows], aggregates[rows]), y[rows])
            loss.backward()
            optimiser.step()
    return module.eval()


def score(module: nn.Module, data: Split) -> npt.NDArray[np.float32]:
    with torch.inference_mode():
        scores: npt.NDArray[np.float32] = module(*data.tensors()).numpy()
    return scores


def train(output: Path, *, seed: int = 7, cache: Path | None = None) -> dict[str, float]:
    """Fit the three models, write the GRU (``torch.export``) and the logistic regression
    (safetensors) as artifacts under ``output``, and return the held-out ROC-AUCs."""
    torch.manual_seed(seed)
    log = read_log(fetch(cache))
    train_split, held = splits(log)
    results: dict[str, float] = {
        "train_purchases": float(len(train_split)),
        "eval_purchases": float(len(held)),
        "eval_positive_rate": float(held.label.mean()),
    }
    inputs = pipeline.describe_inputs()
    example = tuple(t[:2] for t in held.tensors())
    models: dict[str, nn.Module] = {}
    factories: dict[str, Callable[[], nn.Module]] = {
        "gru": lambda: PurchasesNet(sequence=True),
        "no_sequence": lambda: PurchasesNet(sequence=False),
        "rfm_logistic": RFMLogistic,
    }
    for name, factory in factories.items():
        torch.manual_seed(seed)  # each model starts from the same seed
        module = factory()
        columns = train_split.aggregates
        if isinstance(module, RFMLogistic):
            columns = columns[:, list(RFMLogistic.COLUMNS)]
        _standardise(module, columns)
        fit(module, train_split, seed=seed, epochs=3 if name == "rfm_logistic" else 6)
        results[f"roc_auc_{name}"] = roc_auc(held.label, score(module, held))
        models[name] = module
    metrics = {k: round(v, 4) for k, v in results.items()}
    artifacts: dict[str, tuple[str, dict[str, Any]]] = {
        "purchases-gru": ("gru", {"example": example}),  # a torch.export program
        "purchases-rfm": ("rfm_logistic", {"architecture": ("RFMLogistic", {})}),  # safetensors
    }
    for artifact, (model, how) in artifacts.items():
        save_program(
            output / artifact / "1",
            name=artifact,
            version="1",
            pipeline="purchases",
            inputs=inputs,
            model=models[model],
            metrics=metrics,
            **how,
        )
    return results
