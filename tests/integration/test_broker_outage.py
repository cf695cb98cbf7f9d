"""The broker stops answering mid-stream: intake stops, readiness fails, nothing is lost."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from pipelines.fraud.synthetic import SyntheticWorld
from streams.harness import metric_value
from streams.kafka.embedded import EmbeddedBroker
from tests.integration.conftest import Deployment, event_record


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker for this test alone: it is frozen with SIGSTOP."""
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log")
    broker.start()
    yield broker
    if broker.process is not None:
        os.kill(broker.process.pid, signal.SIGCONT)
    broker.stop()


@pytest.mark.broker
def test_outputs_are_retried_through_an_outage_and_readiness_says_so(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    deployment = Deployment(own_broker.bootstrap, tmp_path)
    try:
        worker = deployment.worker(
            STREAMSCORE_DELIVERY_TIMEOUT_MS="1500",
            STREAMSCORE_EMIT_RETRIES="1",
            STREAMSCORE_SESSION_TIMEOUT_MS="30000",
            STREAMSCORE_REBALANCE_TIMEOUT_MS="40000",
        )
        worker.wait_ready()
        world = SyntheticWorld(seed=41, n_entities=100)
        # Enough events after the first 2,000 that the worker is still working through
        # them (publishing is several times faster than scoring) when the broker stops.
        records = [event_record(item.event) for item in world.events(24_000)]
        deployment.publish("events", records[:2000])
        reader = deployment.reader()
        reader.until(lambda o: len(o.scores) >= 2000, 60)

        # Freeze the broker while events keep arriving in the worker's fetch buffers.
        later = threading.Thread(target=deployment.publish, args=("events", records[2000:]))
        later.start()
        later.join()
        assert own_broker.process is not None
        os.kill(own_broker.process.pid, signal.SIGSTOP)
        readiness = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, body = worker.get("/health/ready", timeout=2)
            readiness.append((status, body))
            if status == 503 and b"not getting through" in body:
                break
            time.sleep(0.2)
        os.kill(own_broker.process.pid, signal.SIGCONT)
        assert readiness[-1][0] == 503, readiness[-1]
        assert b"not getting through" in readiness[-1][1]

        ids = {orjson.loads(r.value)["event_id"] for r in records}  # type: ignore[arg-type]
        out = reader.until(lambda o: o.scored_ids() >= ids, 90)
        reader.close()
        assert out.scored_ids() == ids  # nothing lost
        assert out.first_scores_in_order()

        deadline = time.monotonic() + 30
        while worker.get("/health/ready")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker.get("/health/ready")[0] == 200  # recovered on its own
        metrics = worker.settled_metrics()
        assert metric_value(metrics, "streamscore_emit_retries_total") > 0
        assert worker.terminate() == 0
    finally:
        deployment.stop_all()
