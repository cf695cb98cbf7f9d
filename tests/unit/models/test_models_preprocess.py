"""Input spec fitting and the preprocessing it drives."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import ValidationError

from pipelines.fraud.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, RawFeatures
from pipelines.fraud.preprocess import STD_FLOOR, InputSpec, Preprocessor, fit_spec

K = len(NUMERIC_FEATURES)


def _raw(numeric: np.ndarray, channels: list[str] | None = None) -> RawFeatures:
    n = numeric.shape[0]
    channels = channels if channels is not None else ["web"] * n
    return RawFeatures(numeric.astype(np.float32), (channels, ["US"] * n, ["USD"] * n))


def _training_rows() -> RawFeatures:
    numeric = np.ones((6, K), dtype=np.float32)
    numeric[:, 0] = [1.0, 2.0, 3.0, 4.0, np.nan, np.inf]  # observed: 1, 2, 3, 4 -> median 2.5
    numeric[:, 4] = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]  # constant
    channels = ["web", "pos", "web", "app", "pos", "web"]
    return _raw(numeric, channels)


def test_fit_imputes_with_the_median_and_standardises_after_imputation() -> None:
    spec = fit_spec(_training_rows(), min_count=1)
    amount = spec.numeric[0]
    assert amount.name == "amount_log"
    assert amount.impute == 2.5
    filled = np.array([1.0, 2.0, 3.0, 4.0, 2.5, 2.5])
    assert amount.mean == pytest.approx(filled.mean())
    assert amount.std == pytest.approx(filled.std())
    assert amount.indicator
    assert not spec.numeric[1].indicator  # never missing: no indicator
    assert spec.numeric[4].std == STD_FLOOR  # constant column


def test_vocabulary_by_frequency_with_deterministic_ties() -> None:
    spec = fit_spec(_training_rows(), min_count=1)
    assert spec.categorical[0].vocabulary == ("web", "pos", "app")
    assert fit_spec(_training_rows(), max_vocab=2, min_count=1).categorical[0].vocabulary == (
        "web",
        "pos",
    )
    assert fit_spec(_training_rows(), min_count=2).categorical[0].vocabulary == ("web", "pos")
    tie = _raw(np.ones((4, K)), ["b", "a", "a", "b"])
    assert fit_spec(tie, min_count=1).categorical[0].vocabulary == ("a", "b")


def test_transform_imputes_flags_and_one_hots() -> None:
    spec = fit_spec(_training_rows(), numeric=["amount_log", "hour_sin"], min_count=1)
    pre = Preprocessor(spec)
    # amount, hour_sin, missing:amount, channel x 4, country x 2, currency x 2
    assert pre.width == 2 + 1 + 4 + 2 + 2
    assert spec.columns()[2] == "missing:amount_log"
    assert spec.columns()[6] == "channel=<other>"
    numeric = np.ones((3, K), dtype=np.float32)
    numeric[:, 0] = [np.nan, -np.inf, 4.0]
    out = pre.transform(_raw(numeric, ["pos", "fax", "web"]))
    amount = spec.numeric[0]
    imputed = (amount.impute - amount.mean) / amount.std
    assert out.dtype == np.float32
    assert out.shape == (3, pre.width)
    assert out[0, 0] == pytest.approx(imputed)
    assert out[1, 0] == pytest.approx(imputed)  # infinity counts as missing
    assert out[2, 0] == pytest.approx((4.0 - amount.mean) / amount.std)
    assert out[:, 2].tolist() == [1.0, 1.0, 0.0]
    assert out[:, 3:7].tolist() == [[0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]]  # "fax" -> other
    assert out[:, 7:].tolist() == [[1, 0, 1, 0]] * 3  # country US, currency USD: in vocabulary


def test_transform_clips_extreme_values() -> None:
    spec = fit_spec(_training_rows(), min_count=1)
    numeric = np.full((1, K), 3.0e38, dtype=np.float32)
    out = Preprocessor(spec).transform(_raw(numeric))
    assert np.isfinite(out).all()
    assert out[0, :K].max() == spec.clip


def test_transform_of_zero_rows() -> None:
    pre = Preprocessor(fit_spec(_training_rows(), min_count=1))
    out = pre.transform(_raw(np.empty((0, K))))
    assert out.shape == (0, pre.width)
    assert out.dtype == np.float32


def test_transform_refuses_malformed_raw_features() -> None:
    pre = Preprocessor(fit_spec(_training_rows(), min_count=1))
    with pytest.raises(ValueError, match="shape"):
        pre.transform(RawFeatures(np.ones((2, K - 1), dtype=np.float32), ([], [], [])))
    with pytest.raises(ValueError, match="categorical"):
        pre.transform(RawFeatures(np.ones((2, K), dtype=np.float32), (["web"], ["US"], ["USD"])))


@settings(max_examples=60, deadline=None, database=None)
@given(
    numeric=arrays(
        np.float32, st.tuples(st.integers(0, 20), st.just(K)), elements=st.floats(width=32)
    )
)
def test_any_nan_or_inf_pattern_gives_finite_output(numeric: np.ndarray) -> None:
    pre = Preprocessor(fit_spec(_training_rows(), min_count=1))
    out = pre.transform(_raw(numeric))
    assert out.shape == (numeric.shape[0], pre.width)
    assert np.isfinite(out).all()


def test_fit_on_all_missing_column() -> None:
    numeric = np.full((3, K), np.nan, dtype=np.float32)
    spec = fit_spec(_raw(numeric), numeric=["chargeback_rate"], min_count=1)
    assert spec.numeric[0].impute == 0.0
    assert spec.numeric[0].indicator


def test_fit_refuses_unknown_features_and_empty_input() -> None:
    with pytest.raises(ValueError, match="bogus"):
        fit_spec(_training_rows(), numeric=["bogus"])
    with pytest.raises(ValueError, match="bogus"):
        fit_spec(_training_rows(), categorical=["bogus"])
    with pytest.raises(ValueError, match="zero rows"):
        fit_spec(_raw(np.empty((0, K))))


def _spec_dict() -> dict[str, Any]:
    return fit_spec(_training_rows(), min_count=1).model_dump(mode="json")


def test_spec_round_trips_through_json() -> None:
    spec = fit_spec(_training_rows(), min_count=1)
    assert InputSpec.model_validate_json(spec.model_dump_json()) == spec
    assert [c.name for c in spec.categorical] == list(CATEGORICAL_FEATURES)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["numeric"][0].update(name="amount_squared"), "unknown numeric feature"),
        (lambda d: d["categorical"][0].update(name="device"), "unknown categorical feature"),
        (lambda d: d["numeric"].append(dict(d["numeric"][0])), "listed twice"),
        (lambda d: d["numeric"][0].update(std=0.0), "std"),
        (lambda d: d["numeric"][0].update(mean=math.inf), "mean"),
        (lambda d: d["categorical"][0].update(vocabulary=["a", "a"]), "duplicate"),
        (lambda d: d.update(scale=2), "scale"),
        (lambda d: d.update(numeric=[], categorical=[]), "no features"),
    ],
)
def test_spec_refuses_incompatible_content(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    data = _spec_dict()
    change(data)
    with pytest.raises(ValidationError, match=message):
        InputSpec.model_validate(data)
