"""In-flight accounting: stale chunks, backpressure thresholds, draining and abandoning."""

from __future__ import annotations

import asyncio

from streams.kafka.flow import Flow
from streams.metrics import Metrics


def make(max_in_flight: int = 10) -> tuple[Flow, Metrics]:
    metrics = Metrics.create()
    return Flow(max_in_flight, metrics), metrics


async def test_chunks_fetched_before_a_drain_are_refused() -> None:
    flow, _ = make()
    epoch = flow.intake_epoch
    assert flow.admit("p0", epoch, [0, 1]) == 0
    assert await flow.drain(timeout=0.1) is False  # 0 and 1 never finish: abandoned
    assert flow.admit("p0", epoch, [2, 3]) is None  # fetched before the drain: stale
    assert flow.admit("p0", flow.intake_epoch, [2, 3]) == 0


async def test_backpressure_pauses_at_the_limit_and_resumes_below_a_quarter() -> None:
    flow, metrics = make(max_in_flight=12)
    flow.admit("p0", 0, list(range(11)))
    assert not flow.paused
    flow.admit("p0", 0, [11])
    assert flow.paused
    assert metrics.in_flight._value.get() == 12
    flow.finish("p0", range(6), flow.generation)  # 6 left: below half, still paused
    assert flow.paused
    flow.finish("p0", range(6, 9), flow.generation)  # 3 left: not below a quarter yet
    assert flow.paused
    flow.finish("p0", [9], flow.generation)
    assert not flow.paused
    await asyncio.wait_for(flow.wait_resumed(1.0), 1.0)


async def test_drain_waits_for_in_flight_work_to_finish() -> None:
    flow, _ = make()
    flow.admit("p0", 0, [0, 1, 2])
    hooked: list[str] = []

    async def flush() -> None:
        hooked.append("flushed")

    flow.on_drain(flush)
    draining = asyncio.ensure_future(flow.drain(timeout=5))
    await asyncio.sleep(0)
    assert not draining.done()
    flow.finish("p0", [0, 1, 2], flow.generation)
    assert await draining is True
    assert hooked == ["flushed"]
    assert flow.committable("p0") == 3


async def test_abandoned_work_is_never_finished_late() -> None:
    flow, _ = make()
    flow.admit("p0", 0, [0, 1])
    old = flow.generation
    assert await flow.drain(timeout=0.05) is False
    assert flow.generation == old + 1
    assert flow.in_flight == 0
    flow.admit("p0", flow.intake_epoch, [0, 1])  # re-read from the committed offset
    flow.finish("p0", [0, 1], old)  # a late acknowledgement of the abandoned work
    assert flow.committable("p0") == 0  # ignored: only the new work can move the watermark


def test_forget_drops_idle_partitions_only() -> None:
    flow, _ = make()
    flow.admit("p0", 0, [0])
    flow.admit("p1", 0, [0])
    flow.finish("p1", [0], flow.generation)
    flow.forget(["p1"])
    assert flow.tracker.partitions() == ["p0"]
    generation = flow.generation
    flow.forget(["p0"])  # not idle: everything in flight is abandoned
    assert flow.generation == generation + 1
    assert flow.tracker.partitions() == []
