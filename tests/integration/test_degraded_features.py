"""State that cannot be read costs an event its full features, not its score.

A profile or history in the tables that cannot be decoded (written by an
older release, or corrupted) is put in the tables' changelogs before the
worker starts: recovery loads it, and the events of those entities are
scored with what could be read, imputed for the rest, ``degraded: true``.
"""

from __future__ import annotations

import orjson
import pytest

from streams.harness import metric_value
from tests.integration.conftest import PARTITIONS, Deployment, Published, event_record
from tests.integration.records import create_topics

EVENT = {"ts": 1_763_769_600.0, "amount": 20.0, "currency": "EUR", "merchant": "m",
         "country": "DE", "channel": "web"}  # fmt: skip


def ev(entity: str, event_id: str, ts: float = 1_763_769_600.0) -> Published:
    return event_record({**EVENT, "event_id": event_id, "entity_id": entity, "ts": ts})


@pytest.mark.broker
def test_undecodable_state_gives_degraded_scores_and_heals(deployment: Deployment) -> None:
    profiles = f"{deployment.app_id}-profiles-changelog"
    history = f"{deployment.app_id}-history-changelog"
    create_topics(
        deployment.bootstrap, [deployment.topics["events"], profiles, history], PARTITIONS
    )
    # Where the entities live: their first events' partitions (the tables are co-partitioned).
    first = deployment.publish("events", [ev("acct-p", "p-1"), ev("acct-h", "h-1")])
    producer = deployment.producer()
    producer.produce(profiles, key=b"acct-p", value=b"\x00not json", partition=first[0].partition)
    producer.produce(history, key=b"acct-h", value=b"short", partition=first[1].partition)
    producer.flush()

    worker = deployment.worker()
    worker.wait_ready()
    deployment.publish("events", [ev("acct-p", "p-2", 1_763_769_660.0),
                                  ev("acct-h", "h-2", 1_763_769_660.0),
                                  ev("acct-ok", "ok-1")])  # fmt: skip
    reader = deployment.reader()
    out = reader.until(lambda o: len(o.scores) >= 5, 60)
    by_id = {value["event_id"]: value for _, value in out.scores}
    assert not out.dead  # nothing that can be scored is dead-lettered
    assert by_id["p-1"]["degraded"]
    assert by_id["p-2"]["degraded"]  # the profile stays bad
    assert by_id["p-1"]["route"] == "primary"  # the primary scored it, on imputed features
    assert by_id["h-1"]["degraded"]
    assert not by_id["h-2"]["degraded"]  # the history started over with h-1
    assert not by_id["ok-1"]["degraded"]
    assert all(0.0 <= v["score"] <= 1.0 for v in by_id.values())

    # A new profile for the entity replaces the bad one: its next event is whole again.
    deployment.publish("features", [Published(b"acct-p", orjson.dumps(
        {"entity_id": "acct-p", "chargeback_rate": 0.1}), None)])  # fmt: skip
    # The features agent applies it on its own time: events until one sees it.
    for attempt in range(50):
        deployment.publish("events", [ev("acct-p", f"p-{3 + attempt}", 1_763_769_700.0)])
        out = reader.until(lambda o, n=6 + attempt: len(o.scores) >= n, 30)
        if not out.scores[-1][1]["degraded"]:
            break
    else:
        raise AssertionError("the new profile never replaced the undecodable one")
    reader.close()
    text = worker.settled_metrics()
    reasons = {"profile_undecodable": 0.0, "history_undecodable": 0.0}
    for reason in reasons:
        reasons[reason] = metric_value(
            text, "streamscore_degraded_features_total", {"reason": reason}
        )
    assert reasons["history_undecodable"] == 1
    assert reasons["profile_undecodable"] >= 2
    degraded = metric_value(text, "streamscore_events_total", {"outcome": "degraded"})
    assert degraded == reasons["history_undecodable"] + reasons["profile_undecodable"]
    assert metric_value(text, "streamscore_dlq_total", {"stage": "features"}) == 0
