"""``purchases`` end to end on a slice of the real CDNOW log: a worker of the packaged
pipeline and its packaged GRU scores each purchase once, in order per customer, as
``pipeline check`` does, and counts each purchase once in the customer's state."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
from click.testing import CliRunner

from pipelines.purchases import pipeline
from pipelines.purchases.data import events_jsonl, fetch, read_log, replay_order
from streams.cli import main
from tests.integration.conftest import Deployment, Published
from tests.integration.test_declared_pipeline import score_once, state_counts

SLICE = 3_000  # the first purchases by date: January 1997, thousands of customers


@pytest.mark.broker
def test_a_slice_of_the_real_log_is_scored_by_a_worker_as_pipeline_check_scores_it(
    deployment: Deployment,
) -> None:
    log = read_log(fetch())
    values = events_jsonl(log, replay_order(log)[:SLICE])
    events = [orjson.loads(v) for v in values]
    bad = [
        (b"c00001", b"{not json", b"decode"),
        (b"c00002", orjson.dumps({**events[5], "customer": "c00002", "cds": -1}), b"validate"),
        (b"c00003", orjson.dumps({"customer": "c00003", "ts": 8.6e8}), b"validate"),
    ]
    records = [
        Published(str(e["customer"]).encode(), v, None) for e, v in zip(events, values, strict=True)
    ]
    deployment.worker("w1", STREAMSCORE_PIPELINE="purchases").wait_ready()
    out = score_once(deployment, records, {str(e["purchase_id"]) for e in events}, bad)
    assert out.first_scores_in_order()

    checked = CliRunner().invoke(
        main, ["pipeline", "check", "--pipeline", "purchases", "-"], input=b"\n".join(values)
    )
    assert checked.exit_code == 0, checked.output
    expected = {s["event_id"]: s["score"] for s in map(orjson.loads, checked.stdout.splitlines())}
    for message, score in out.scores:
        assert (score["model"], score["model_version"], score["route"]) == (
            "purchases-gru", "1", "primary",
        )  # fmt: skip
        assert message.key() == str(score["entity_id"]).encode()
        assert score["score"] == pytest.approx(expected[score["event_id"]], abs=1e-5)

    # Each purchase counted once in its customer's state (read back from the changelog).
    counted = state_counts(deployment, pipeline)
    assert counted == dict(Counter(str(e["customer"]) for e in events))
