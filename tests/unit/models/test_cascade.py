"""The cascade evaluation: escalation replaces exactly the band's scores."""

from __future__ import annotations

from models.registry import resolve
from pipelines.fraud.cascade import evaluate_cascade


def test_an_empty_band_is_the_first_model_and_a_full_band_the_second() -> None:
    first, deep = resolve("fraud-mlp:1"), resolve("fraud-deep:1")
    none = evaluate_cascade(first, deep, (2.0, 3.0), n_events=3_000, n_entities=300)
    assert none.escalated_share == 0.0
    assert none.auc_cascade == none.auc_first
    every = evaluate_cascade(first, deep, (0.0, 1.0), n_events=3_000, n_entities=300)
    assert every.escalated_share == 1.0
    assert abs(every.auc_cascade - every.auc_escalation) < 1e-9
    assert 0.8 < every.auc_first <= 1.0
    assert every.rate_cascade < every.rate_first
