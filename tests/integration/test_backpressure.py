"""A burst far above capacity: in-flight stays bounded, intake pauses, memory stays flat."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest

from pipelines.fraud.synthetic import SyntheticWorld
from streams.harness import WorkerProcess, metric_value
from tests.integration.conftest import Deployment, event_record

MAX_IN_FLIGHT = 1000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Sampler(threading.Thread):
    """Reads the worker's gauges and memory every few milliseconds while the burst drains."""

    def __init__(self, worker: WorkerProcess) -> None:
        super().__init__(daemon=True)
        self.worker = worker
        self.stop = threading.Event()
        self.in_flight: list[float] = []
        self.paused: list[float] = []
        self.rss: list[float] = []

    def run(self) -> None:
        assert self.worker.process is not None
        while not self.stop.is_set():
            text = self.worker.metrics()
            self.in_flight.append(metric_value(text, "streamscore_in_flight"))
            self.paused.append(metric_value(text, "streamscore_paused_partitions"))
            self.rss.append(rss_mb(self.worker.process.pid))
            time.sleep(0.02)


@pytest.mark.broker
def test_a_burst_is_absorbed_with_bounded_in_flight_and_memory(deployment: Deployment) -> None:
    worker = deployment.worker(
        STREAMSCORE_MAX_IN_FLIGHT=str(MAX_IN_FLIGHT), STREAMSCORE_MAX_BATCH_SIZE="256"
    )
    worker.wait_ready()
    assert worker.process is not None
    world = SyntheticWorld(seed=51, n_entities=500)
    small = [event_record(item.event) for item in world.events(2000)]
    deployment.publish("events", small)
    reader = deployment.reader()
    reader.until(lambda o: len(o.scores) >= len(small), 60)
    baseline = rss_mb(worker.process.pid)  # warm: every code path has run once

    burst = [event_record(item.event) for item in world.events(60_000)]
    sampler = Sampler(worker)
    sampler.start()
    deployment.publish("events", burst)  # far faster than one worker scores on two cores
    total = len(small) + len(burst)
    out = reader.until(lambda o: len(o.scored_ids()) >= total, 180)
    sampler.stop.set()
    sampler.join()
    reader.close()

    ids = {orjson.loads(r.value)["event_id"] for r in small + burst}  # type: ignore[arg-type]
    assert out.scored_ids() == ids
    assert max(sampler.in_flight) <= MAX_IN_FLIGHT
    assert max(sampler.paused) > 0  # intake did pause
    assert max(sampler.rss) - baseline < 150, (baseline, max(sampler.rss))
