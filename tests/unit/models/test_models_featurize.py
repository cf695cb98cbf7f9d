"""Feature semantics shared by training and serving: history, offsets, NaN rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.fraud.features import (
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    FloatArray,
    History,
    RawFeatures,
    StoredHistory,
    featurize,
    roll,
)
from pipelines.fraud.synthetic import SyntheticWorld
from pipelines.fraud.train import build_features

COL = {name: i for i, name in enumerate(NUMERIC_FEATURES)}


def test_each_event_sees_the_history_before_it() -> None:
    history = roll(["a", "b", "a", "a"], [10.0, 5.0, 20.0, 30.0], [0.0, 1.0, 10.0, 15.0],
                   [0, 1, 2, 3], {})  # fmt: skip
    assert history.count.tolist() == [0.0, 0.0, 1.0, 2.0]
    assert history.mean_amount[2:].tolist() == [10.0, 15.0]
    assert history.seconds_since_last[2:].tolist() == [10.0, 5.0]
    assert np.isnan(history.mean_amount[:2]).all()
    assert np.isnan(history.seconds_since_last[:2]).all()
    assert unpacked(history) == {"a": StoredHistory(3, 20.0, 15.0, 3),
                                 "b": StoredHistory(1, 5.0, 1.0, 1)}  # fmt: skip


def unpacked(history: History) -> dict[str, StoredHistory]:
    return {entity: StoredHistory.unpack(value) for entity, value in history.final.items()}


def test_redelivered_events_change_nothing() -> None:
    stored = StoredHistory(count=2, mean_amount=15.0, last_ts=100.0, last_offset=5)
    replay = roll(["a", "a"], [999.0, 1.0], [90.0, 100.0], [4, 5], {"a": stored.pack()})
    # Unchanged, but handed back so the changelog catches up with the local store.
    assert unpacked(replay) == {"a": stored}
    assert replay.count.tolist() == [2.0, 2.0]
    assert replay.mean_amount.tolist() == [15.0, 15.0]
    # A redelivery's time since the previous event is unknown, not a (bursty) 0.
    assert np.isnan(replay.seconds_since_last).all()

    mixed = roll(["a", "a"], [999.0, 30.0], [100.0, 160.0], [5, 6], {"a": stored.pack()})
    assert unpacked(mixed) == {"a": StoredHistory(3, 20.0, 160.0, 6)}


def test_none_in_start_means_never_seen() -> None:
    history = roll(["x"], [3.0], [7.0], [0], {"x": None})
    assert history.count.tolist() == [0.0]
    assert unpacked(history)["x"] == StoredHistory(1, 3.0, 7.0, 0)


def test_a_stored_history_round_trips_and_another_record_is_refused() -> None:
    agg = StoredHistory(7, 12.5, 1_763_769_600.25, 123_456_789)
    assert StoredHistory.unpack(agg.pack()) == agg
    with pytest.raises(ValueError, match="not a history record"):
        StoredHistory.unpack(b"\x00" * 32)  # the old fixed struct: another size


def test_a_history_that_cannot_be_decoded_starts_over_and_is_marked() -> None:
    history = roll(["a", "b"], [5.0, 6.0], [1.0, 2.0], [7, 8], {"a": b"junk", "b": None})
    assert history.restarted.tolist() == [True, False]
    assert history.count.tolist() == [0.0, 0.0]
    assert unpacked(history)["a"] == StoredHistory(1, 5.0, 1.0, 7)


def _num(value: object) -> float:
    assert isinstance(value, int | float)
    return float(value)


def test_chunked_processing_equals_one_pass() -> None:
    """The worker sees the stream in chunks with stored state; training sees it in one go."""
    world = SyntheticWorld(2, n_entities=50)
    events = [e.event for e in world.events(3_000)]
    table = world.feature_table()
    whole = build_features(events, table)
    state: dict[str, bytes | None] = {}
    parts = []
    for start in range(0, len(events), 700):
        chunk = events[start : start + 700]
        entities = [str(e["entity_id"]) for e in chunk]
        amounts = [_num(e["amount"]) for e in chunk]
        stamps = [_num(e["ts"]) for e in chunk]
        history = roll(entities, amounts, stamps, range(start, start + len(chunk)), state)
        state.update(history.final)
        channel, country, currency = (
            [str(e[name]) for e in chunk] for name in CATEGORICAL_FEATURES
        )
        profiles = [table.get(entity) for entity in entities]
        parts.append(featurize(amounts, stamps, channel, country, currency, profiles, history))
    chunked = RawFeatures.concat(parts)
    np.testing.assert_array_equal(chunked.numeric, whole.numeric)
    assert chunked.categorical == whole.categorical


def _one(profile: dict[str, float] | None, history: History) -> FloatArray:
    raw = featurize([100.0], [6 * 3600.0], ["web"], ["US"], ["USD"], [profile], history)
    assert raw.numeric.shape == (1, len(NUMERIC_FEATURES))
    assert raw.numeric.dtype == np.float32
    row: FloatArray = raw.numeric[0]
    return row


def test_featurize_nan_rules() -> None:
    fresh = roll(["a"], [100.0], [0.0], [0], {})
    row = _one(None, fresh)
    unknown = ["account_age_days_log", "chargeback_rate", "avg_amount_30d_log",
               "txn_count_30d_log", "history_mean_amount_log", "seconds_since_last_log",
               "amount_vs_avg_30d", "amount_vs_history"]  # fmt: skip
    assert {n for n in NUMERIC_FEATURES if np.isnan(row[COL[n]])} == set(unknown)
    assert row[COL["history_count_log"]] == 0.0
    assert row[COL["amount_log"]] == pytest.approx(math.log1p(100.0))
    assert row[COL["hour_sin"]] == pytest.approx(1.0)  # 06:00 UTC
    assert row[COL["hour_cos"]] == pytest.approx(0.0, abs=1e-6)

    seen = roll(["a"], [100.0], [50.0], [1], {"a": StoredHistory(1, 50.0, 10.0, 0).pack()})
    row = _one({"account_age_days": 365.0, "avg_amount_30d": 50.0}, seen)
    assert np.isnan(row[COL["chargeback_rate"]])
    assert np.isnan(row[COL["txn_count_30d_log"]])
    assert row[COL["account_age_days_log"]] == pytest.approx(math.log1p(365.0))
    assert row[COL["seconds_since_last_log"]] == pytest.approx(math.log1p(40.0))
    assert row[COL["amount_vs_avg_30d"]] == pytest.approx(math.log1p(100) - math.log1p(50))
    assert row[COL["amount_vs_history"]] == pytest.approx(math.log1p(100) - math.log1p(50))


def test_featurize_empty_chunk() -> None:
    raw = featurize([], [], [], [], [], [], roll([], [], [], [], {}))
    assert raw.numeric.shape == (0, len(NUMERIC_FEATURES))
    assert len(raw) == 0
    assert len(raw.categorical) == len(CATEGORICAL_FEATURES)


def test_the_declared_pipeline_computes_what_training_computes() -> None:
    """`pipeline check`/`features` and the worker (the declaration) feed a model exactly the
    numbers and categories that training (:func:`build_features`) fits it on."""
    import orjson

    from pipelines.fraud import pipeline as fraud
    from pipelines.fraud.features import encode_categorical
    from streams.pipeline.offline import run_lines

    events = [e.event for e in SyntheticWorld(5, n_entities=40).events(1_500)]
    lines = [orjson.dumps(e) for e in events]
    chunks = list(run_lines(fraud, lines, chunk=256))  # chunks: the state carries across
    assert all(not c.failures for c in chunks)
    numeric = np.concatenate([c.featurized.inputs["numeric"] for c in chunks if c.featurized])
    codes = np.concatenate([c.featurized.inputs["categorical"] for c in chunks if c.featurized])
    raw = build_features(events, {})  # no profiles: a file of events has none
    np.testing.assert_array_equal(numeric, raw.numeric)
    np.testing.assert_array_equal(codes, encode_categorical(*raw.categorical))
    assert (codes >= 0).all()  # every generated channel, country and currency has a code
