"""The synthetic world: reproducible, valid on the wire, with a plausible fraud pattern."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from pipelines.fraud import pipeline as fraud
from pipelines.fraud.events import Event
from pipelines.fraud.features import PROFILE_FEATURES
from pipelines.fraud.synthetic import MALFORMED_KINDS, SyntheticWorld, malformed_values
from schemas.profiles import FeatureUpdate

ROOT = Path(__file__).resolve().parents[3]


def _digest(seed: int, n: int) -> str:
    world = SyntheticWorld(seed, n_entities=200)
    payload = [(e.event, e.is_fraud) for e in world.events(n)] + [world.profiles()]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def test_same_seed_same_world() -> None:
    a, b = SyntheticWorld(3, n_entities=200), SyntheticWorld(3, n_entities=200)
    assert a.profiles() == b.profiles()
    assert a.entity_ids() == b.entity_ids()
    assert a.events(2_000) == b.events(2_000)
    assert a.events(500) == b.events(500)  # and the continuation too


def test_different_seed_differs() -> None:
    assert _digest(1, 500) != _digest(2, 500)


def test_same_output_in_another_process() -> None:
    script = (
        "import hashlib, json\n"
        "from pipelines.fraud.synthetic import SyntheticWorld\n"
        "w = SyntheticWorld(5, n_entities=200)\n"
        "p = [(e.event, e.is_fraud) for e in w.events(700)] + [w.profiles()]\n"
        "print(hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=ROOT,
    )
    assert out.stdout.strip() == _digest(5, 700)


def test_events_are_valid_wire_events() -> None:
    events = [e.event for e in SyntheticWorld(4, n_entities=300).events(3_000)]
    assert all(set(e) == set(Event.model_fields) for e in events)
    checked = fraud.schema.validate_many(
        [e["entity_id"].encode() for e in events], [json.dumps(e).encode() for e in events]
    )
    assert [c.event_id for c in checked] == [e["event_id"] for e in events]
    for event in events[:200]:
        Event.model_validate_json(json.dumps(event))
    assert len({e["event_id"] for e in events}) == len(events)
    assert events[0]["event_id"] == "e-0000001"


def test_timestamps_are_ordered_overall_and_per_entity() -> None:
    world = SyntheticWorld(8, n_entities=100, start_ts=1_000_000.0)
    first, second = world.events(1_500), world.events(1_500)
    events = [e.event for e in first + second]
    stamps = [ts for e in events if isinstance(ts := e["ts"], float)]
    assert len(stamps) == len(events)
    assert stamps[0] >= 1_000_000.0
    assert stamps == sorted(stamps)
    last: dict[object, float] = {}
    for event, ts in zip(events, stamps, strict=True):
        assert ts >= last.get(event["entity_id"], -1.0)
        last[event["entity_id"]] = ts
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids)  # the second round continues the numbering


def test_mix_of_values_with_a_long_tail() -> None:
    events = [e.event for e in SyntheticWorld(6, n_entities=1000).events(20_000)]
    channels = Counter(e["channel"] for e in events)
    countries = Counter(e["country"] for e in events)
    currencies = Counter(e["currency"] for e in events)
    assert set(channels) == {"web", "pos", "app"}
    assert len(countries) >= 30
    assert sum(1 for c in countries.values() if c < 20) >= 10  # rare ones
    assert len(currencies) >= 20
    assert countries.most_common(1)[0][0] == "US"


def test_fraud_rate_and_pattern() -> None:
    labeled = SyntheticWorld(9, n_entities=1000).events(30_000)
    fraud = np.array([e.is_fraud for e in labeled])
    assert 0.02 <= fraud.mean() <= 0.05
    web = np.array([e.event["channel"] == "web" for e in labeled])
    pos = np.array([e.event["channel"] == "pos" for e in labeled])
    assert fraud[web].mean() > 3 * fraud[pos].mean()


def test_profiles_are_plausible_and_partly_missing() -> None:
    world = SyntheticWorld(10, n_entities=2_000)
    profiles = world.profiles()
    table = world.feature_table()
    assert 0.01 * 2_000 <= 2_000 - len(profiles) <= 0.06 * 2_000  # no profile at all
    partial = sum(1 for p in profiles if len(p) < 1 + len(PROFILE_FEATURES))
    assert 0.06 * len(profiles) <= partial <= 0.14 * len(profiles)
    for profile in profiles:
        assert set(profile) <= {"entity_id", *PROFILE_FEATURES}
        update = FeatureUpdate.model_validate(profile)
        assert update.features() == table[update.entity_id]  # the table the worker keeps
        values = table[update.entity_id]
        assert isinstance(profile.get("account_age_days", 0), int)
        assert isinstance(profile.get("txn_count_30d", 0), int)
        assert 0 <= values.get("account_age_days", 0) <= 4000
        assert 0.0 <= values.get("chargeback_rate", 0.0) <= 0.3
        assert values.get("avg_amount_30d", 1.0) > 0
        assert values.get("txn_count_30d", 0) >= 0


def test_tiny_worlds_and_rounds() -> None:
    world = SyntheticWorld(1, n_entities=1)
    events = [e.event for _ in range(50) for e in world.events(1)]  # most rounds: no incident
    assert len({e["event_id"] for e in events}) == 50
    assert world.events(0) == []
    with pytest.raises(ValueError, match="non-negative"):
        world.events(-1)


def test_malformed_values_are_varied_deterministic_and_all_invalid() -> None:
    values = malformed_values(42, 3 * MALFORMED_KINDS)
    assert values == malformed_values(np.random.default_rng(42), 3 * MALFORMED_KINDS)
    assert len(values) == 3 * MALFORMED_KINDS
    assert all(isinstance(v, bytes) for v in values)
    assert len(set(malformed_values(7, MALFORMED_KINDS))) == MALFORMED_KINDS
    for value in values:
        with pytest.raises(ValidationError):
            Event.model_validate_json(value)
    joined = b"\n".join(values)
    for marker in (b"NaN", b"Infinity", b'"usd"', b'"fax"', b"\xff"):
        assert marker in joined
    assert any(v.startswith(b"[") for v in values)
