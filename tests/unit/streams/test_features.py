"""The fraud pipeline's intake per chunk: profiles, online history in offset order,
changelog writes, and state that cannot be read scored degraded on imputed history."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import orjson

from pipelines.fraud import pipeline as fraud
from pipelines.fraud.features import NUMERIC_FEATURES, StoredHistory
from streams.kafka.emit import Outgoing
from streams.scoring.declared import DeclaredIntake
from streams.scoring.intake import Intake

COL = {name: i for i, name in enumerate(NUMERIC_FEATURES)}


class FakeTable:
    """The TableState interface over dicts (one per partition)."""

    def __init__(self, topic: str) -> None:
        self.changelog_topic = topic
        self.data: dict[int, dict[bytes, bytes]] = defaultdict(dict)
        self.fail = False
        self.reads: list[int] = []

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        self.reads.append(partition)
        if self.fail:
            raise OSError("disk on fire")
        return [self.data[partition].get(key) for key in keys]

    def put_many(self, partition: int, items: dict[bytes, bytes]) -> list[Outgoing]:
        self.data[partition].update(items)
        return [Outgoing(self.changelog_topic, k, v, None, partition) for k, v in items.items()]


@dataclass
class Rec:
    key: bytes
    value: bytes
    offset: int
    partition: int = 0
    topic: str = "events"
    timestamp: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def ev(entity: str, amount: float, ts: float) -> dict[str, object]:
    return {"event_id": f"{entity}-{ts}", "entity_id": entity, "ts": ts, "amount": amount,
            "currency": "EUR", "merchant": "m", "country": "DE", "channel": "web"}  # fmt: skip


class Stage:
    """The intake, called as the fetch loop calls it: records of events."""

    def __init__(self, intake: DeclaredIntake) -> None:
        self.intake = intake

    def prepare(self, at: list[tuple[int, int]], events: list[dict[str, object]]) -> Intake:
        records = [
            Rec(str(e["entity_id"]).encode(), orjson.dumps(e), offset, partition)
            for (offset, partition), e in zip(at, events, strict=True)
        ]
        prepared = self.intake.prepare(records)
        assert prepared.dead == []
        assert prepared.inputs is not None
        return prepared


def stage() -> tuple[Stage, FakeTable, FakeTable]:
    profiles, history = FakeTable("p-changelog"), FakeTable("h-changelog")
    return Stage(DeclaredIntake(fraud, profiles, history)), profiles, history


def numeric_of(prepared: Intake) -> np.ndarray:
    assert prepared.inputs is not None
    return prepared.inputs.arrays["numeric"]  # type: ignore[attr-defined, no-any-return]


def test_profiles_and_history_feed_the_features_and_history_is_written_back() -> None:
    features, profiles, history = stage()
    profiles.data[2][b"a"] = orjson.dumps({"account_age_days": 99.0, "chargeback_rate": 0.2})
    events = [ev("a", 10.0, 100.0), ev("b", 5.0, 101.0), ev("a", 30.0, 160.0)]
    prepared = features.prepare([(10, 2), (11, 2), (12, 2)], events)
    assert len(prepared.ids) == 3
    numeric = numeric_of(prepared)
    assert math.isclose(numeric[0, COL["account_age_days_log"]], math.log1p(99.0), rel_tol=1e-6)
    assert math.isclose(numeric[0, COL["chargeback_rate"]], 0.2, rel_tol=1e-6)
    assert math.isnan(numeric[1, COL["chargeback_rate"]])  # b has no profile: imputed later
    assert numeric[0, COL["history_count_log"]] == 0.0
    assert math.isclose(numeric[2, COL["history_count_log"]], math.log1p(1.0), rel_tol=1e-6)
    assert math.isclose(numeric[2, COL["seconds_since_last_log"]], math.log1p(60.0), rel_tol=1e-6)
    assert {(m.key, m.partition, m.topic) for m in prepared.changelog} == {
        (b"a", 2, "h-changelog"),
        (b"b", 2, "h-changelog"),
    }
    assert StoredHistory.unpack(history.data[2][b"a"]) == StoredHistory(2, 20.0, 160.0, 12)

    # The next chunk continues from the stored history; a replayed event counts once.
    again = features.prepare([(12, 2), (13, 2)], [ev("a", 30.0, 160.0), ev("a", 5.0, 170.0)])
    assert math.isnan(numeric_of(again)[0, COL["seconds_since_last_log"]])
    assert StoredHistory.unpack(history.data[2][b"a"]) == StoredHistory(3, 15.0, 170.0, 13)


def test_a_profile_that_cannot_be_decoded_degrades_only_that_entitys_events() -> None:
    features, profiles, history = stage()
    profiles.data[0][b"bad"] = b"\x00not json"
    profiles.data[0][b"ok"] = orjson.dumps({"chargeback_rate": 0.25})
    events = [ev("ok", 1.0, 1.0), ev("bad", 1.0, 2.0), ev("ok", 1.0, 3.0)]
    prepared = features.prepare([(0, 0), (1, 0), (2, 0)], events)
    assert len(prepared.ids) == 3  # every event is scored
    assert prepared.degraded.tolist() == [False, True, False]
    assert prepared.degraded_reasons == {"profile_undecodable": 1}
    numeric = numeric_of(prepared)
    assert math.isnan(numeric[1, COL["chargeback_rate"]])  # imputed by the model
    assert math.isclose(numeric[2, COL["chargeback_rate"]], 0.25, rel_tol=1e-6)
    # Its history is readable, so it is kept and updated as usual.
    assert StoredHistory.unpack(history.data[0][b"bad"]).count == 1


def test_a_failing_store_degrades_the_chunk_and_never_overwrites_the_history() -> None:
    features, _, history = stage()
    history.data[0][b"a"] = StoredHistory(7, 3.0, 0.5, 99).pack()
    history.fail = True
    events = [ev("a", 1.0, 1.0), ev("b", 1.0, 2.0), ev("a", 1.0, 3.0)]
    prepared = features.prepare([(100, 0), (101, 0), (102, 0)], events)
    assert len(prepared.ids) == 3
    assert prepared.degraded.tolist() == [True, True, True]
    assert prepared.degraded_reasons == {"state_unreadable": 3}
    numeric = numeric_of(prepared)
    for column in ("history_count_log", "history_mean_amount_log", "seconds_since_last_log"):
        assert np.isnan(numeric[:, COL[column]]).all(), column  # unknown, not "never seen"
    assert prepared.changelog == []  # a guess would overwrite the real history
    assert StoredHistory.unpack(history.data[0][b"a"]) == StoredHistory(7, 3.0, 0.5, 99)


def test_a_history_that_cannot_be_decoded_degrades_its_events_and_starts_over() -> None:
    features, _, history = stage()
    history.data[0][b"a"] = b"short"
    events = [ev("a", 10.0, 1.0), ev("a", 20.0, 3.0), ev("b", 1.0, 4.0)]
    prepared = features.prepare([(5, 0), (6, 0), (7, 0)], events)
    assert prepared.degraded.tolist() == [True, True, False]
    assert prepared.degraded_reasons == {"history_undecodable": 2}
    assert np.isnan(numeric_of(prepared)[:2, COL["history_count_log"]]).all()
    assert numeric_of(prepared)[2, COL["history_count_log"]] == 0.0
    assert StoredHistory.unpack(history.data[0][b"a"]) == StoredHistory(2, 15.0, 3.0, 6)


def test_a_chunk_of_several_partitions_reads_each_partition_once() -> None:
    features, profiles, history = stage()
    profiles.data[1][b"a"] = orjson.dumps({"chargeback_rate": 0.5})
    events = [ev("a", 1.0, 1.0), ev("b", 2.0, 2.0), ev("a", 3.0, 3.0)]
    prepared = features.prepare([(5, 1), (9, 3), (6, 1)], events)
    assert sorted(profiles.reads) == [1, 3]
    assert math.isclose(numeric_of(prepared)[2, COL["chargeback_rate"]], 0.5, rel_tol=1e-6)
    assert {(m.key, m.partition) for m in prepared.changelog} == {(b"a", 1), (b"b", 3)}
    assert StoredHistory.unpack(history.data[1][b"a"]).count == 2
