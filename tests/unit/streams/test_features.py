"""Feature lookup per chunk: profiles, online history in offset order, changelog writes."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import orjson

from pipelines.fraud.features import NUMERIC_FEATURES, StoredHistory
from pipelines.fraud.intake import FeatureStage
from streams.kafka.emit import Outgoing

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
    offset: int
    partition: int = 0
    topic: str = "events"


def ev(entity: str, amount: float, ts: float) -> dict[str, object]:
    return {"event_id": f"{entity}-{ts}", "entity_id": entity, "ts": ts, "amount": amount,
            "currency": "EUR", "merchant": "m", "country": "DE", "channel": "web"}  # fmt: skip


def stage() -> tuple[FeatureStage, FakeTable, FakeTable]:
    profiles, history = FakeTable("p-changelog"), FakeTable("h-changelog")
    return FeatureStage(profiles, history), profiles, history  # type: ignore[arg-type]


def test_profiles_and_history_feed_the_features_and_history_is_written_back() -> None:
    features, profiles, history = stage()
    profiles.data[2][b"a"] = orjson.dumps({"account_age_days": 99.0, "chargeback_rate": 0.2})
    events = [ev("a", 10.0, 100.0), ev("b", 5.0, 101.0), ev("a", 30.0, 160.0)]
    prepared = features.prepare([Rec(10, 2), Rec(11, 2), Rec(12, 2)], events)  # type: ignore[arg-type]
    assert prepared.keep == [0, 1, 2]
    assert prepared.failed == {}
    numeric = prepared.raw.numeric
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
    again = features.prepare([Rec(12, 2), Rec(13, 2)], [ev("a", 30.0, 160.0), ev("a", 5.0, 170.0)])  # type: ignore[arg-type]
    assert math.isnan(again.raw.numeric[0, COL["seconds_since_last_log"]])
    assert StoredHistory.unpack(history.data[2][b"a"]) == StoredHistory(3, 15.0, 170.0, 13)


def test_a_profile_that_cannot_be_decoded_degrades_only_that_entitys_events() -> None:
    features, profiles, history = stage()
    profiles.data[0][b"bad"] = b"\x00not json"
    profiles.data[0][b"ok"] = orjson.dumps({"chargeback_rate": 0.25})
    events = [ev("ok", 1.0, 1.0), ev("bad", 1.0, 2.0), ev("ok", 1.0, 3.0)]
    prepared = features.prepare([Rec(0), Rec(1), Rec(2)], events)  # type: ignore[arg-type]
    assert prepared.keep == [0, 1, 2]  # every event is scored
    assert prepared.failed == {}
    assert prepared.degraded.tolist() == [False, True, False]
    assert prepared.degraded_reasons == {"profile_undecodable": 1}
    numeric = prepared.raw.numeric
    assert math.isnan(numeric[1, COL["chargeback_rate"]])  # imputed by the model
    assert math.isclose(numeric[2, COL["chargeback_rate"]], 0.25, rel_tol=1e-6)
    # Its history is readable, so it is kept and updated as usual.
    assert StoredHistory.unpack(history.data[0][b"bad"]).count == 1


def test_a_failing_store_degrades_the_chunk_and_never_overwrites_the_history() -> None:
    features, _, history = stage()
    history.data[0][b"a"] = StoredHistory(7, 3.0, 0.5, 99).pack()
    history.fail = True
    events = [ev("a", 1.0, 1.0), ev("b", 1.0, 2.0), ev("a", 1.0, 3.0)]
    prepared = features.prepare([Rec(100), Rec(101), Rec(102)], events)  # type: ignore[arg-type]
    assert prepared.keep == [0, 1, 2]
    assert prepared.degraded.tolist() == [True, True, True]
    assert prepared.degraded_reasons == {"state_unreadable": 3}
    numeric = prepared.raw.numeric
    for column in ("history_count_log", "history_mean_amount_log", "seconds_since_last_log"):
        assert np.isnan(numeric[:, COL[column]]).all(), column  # unknown, not "never seen"
    assert prepared.changelog == []  # a guess would overwrite the real history
    assert StoredHistory.unpack(history.data[0][b"a"]) == StoredHistory(7, 3.0, 0.5, 99)


def test_a_history_that_cannot_be_decoded_degrades_its_events_and_starts_over() -> None:
    features, _, history = stage()
    history.data[0][b"a"] = b"short"
    events = [ev("a", 10.0, 1.0), ev("a", 20.0, 3.0), ev("b", 1.0, 4.0)]
    prepared = features.prepare([Rec(5), Rec(6), Rec(7)], events)  # type: ignore[arg-type]
    assert prepared.degraded.tolist() == [True, True, False]
    assert prepared.degraded_reasons == {"history_undecodable": 2}
    assert np.isnan(prepared.raw.numeric[:2, COL["history_count_log"]]).all()
    assert prepared.raw.numeric[2, COL["history_count_log"]] == 0.0
    assert StoredHistory.unpack(history.data[0][b"a"]) == StoredHistory(2, 15.0, 3.0, 6)


def test_a_chunk_of_several_partitions_reads_each_partition_once() -> None:
    features, profiles, history = stage()
    profiles.data[1][b"a"] = orjson.dumps({"chargeback_rate": 0.5})
    events = [ev("a", 1.0, 1.0), ev("b", 2.0, 2.0), ev("a", 3.0, 3.0)]
    prepared = features.prepare([Rec(5, 1), Rec(9, 3), Rec(6, 1)], events)  # type: ignore[arg-type]
    assert sorted(profiles.reads) == [1, 3]
    assert math.isclose(prepared.raw.numeric[2, COL["chargeback_rate"]], 0.5, rel_tol=1e-6)
    assert {(m.key, m.partition) for m in prepared.changelog} == {(b"a", 1), (b"b", 3)}
    assert StoredHistory.unpack(history.data[1][b"a"]).count == 2
