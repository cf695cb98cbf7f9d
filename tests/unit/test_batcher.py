"""The micro-batcher, driven by a fake clock: triggers, the time bound, order, errors."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Self

import pytest

from streams.clock import FakeClock
from streams.scoring.batcher import Batch, MicroBatcher


class Items(list[int]):
    def split(self, n: int) -> tuple[Self, Self]:
        return type(self)(self[:n]), type(self)(self[n:])


async def settle(condition: Callable[[], bool] = lambda: False, rounds: int = 200) -> None:
    """Let the loop run until ``condition`` holds or it has nothing left to do."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)


class Harness:
    def __init__(
        self,
        *,
        max_size: int = 4,
        max_wait: float = 0.010,
        concurrency: int = 1,
        capacity: int = 64,
        run: Callable[[Batch[Items]], object] | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.delivered: list[tuple[Batch[Items], object]] = []
        self.gates: dict[int, asyncio.Future[None]] = {}
        self._custom_run = run

        async def run_batch(batch: Batch[Items]) -> list[int]:
            if self._custom_run is not None:
                self._custom_run(batch)
            gate = self.gates.get(batch.seq)
            if gate is not None:
                await gate
            return [x * 10 for part in batch.parts for x in part]

        self.batcher: MicroBatcher[Items, list[int]] = MicroBatcher(
            run_batch,
            lambda b, r: self.delivered.append((b, r)),
            max_size=max_size,
            max_wait=max_wait,
            capacity=max(capacity, max_size),
            concurrency=concurrency,
            clock=self.clock,
        )
        self.batcher.start()

    def items(self) -> list[int]:
        return [x for b, _ in self.delivered for part in b.parts for x in part]


async def test_size_trigger_dispatches_without_waiting() -> None:
    h = Harness(max_size=4, max_wait=10.0)
    h.batcher.put_nowait(Items([1, 2]))
    await settle()
    assert h.delivered == []
    h.batcher.put_nowait(Items([3, 4, 5]))
    await settle(lambda: len(h.delivered) == 1)
    batch, result = h.delivered[0]
    assert [x for p in batch.parts for x in p] == [1, 2, 3, 4]
    assert result == [10, 20, 30, 40]
    assert batch.waited == 0.0
    assert h.batcher.queued == 1  # the 5 waits for its own bound
    await h.batcher.stop()


async def test_time_trigger_fires_exactly_at_the_bound() -> None:
    h = Harness(max_size=100, max_wait=0.010)
    h.batcher.put_nowait(Items([7]))
    await settle(lambda: h.clock.waiting == 1)
    h.clock.advance(0.009)
    await settle()
    assert h.delivered == []
    h.clock.advance(0.001)
    await settle(lambda: len(h.delivered) == 1)
    assert h.delivered[0][1] == [70]
    assert h.delivered[0][0].waited == pytest.approx(0.010)
    await h.batcher.stop()


async def test_no_event_waits_past_the_bound_when_a_runner_is_free() -> None:
    rng = random.Random(4)
    # Ticks of 1/4 s and a bound of 10 ticks: exact in binary floating point.
    h = Harness(max_size=8, max_wait=2.5, concurrency=1)
    sent: list[int] = []
    idle = lambda: h.clock.waiting == 1 or h.batcher.queued == 0  # noqa: E731
    for _ in range(300):
        part = Items(range(len(sent), len(sent) + rng.randint(1, 5)))
        sent += part
        h.batcher.put_nowait(part)
        await settle(idle)
        for _ in range(rng.choice([0, 0, 1, 4, 12])):
            h.clock.advance(0.25)
            await settle(idle)
    for _ in range(20):
        h.clock.advance(0.25)
        await settle(idle)
    await settle(lambda: h.batcher.queued == 0 and h.batcher.busy == 0)
    assert h.items() == sent
    assert all(b.size <= 8 for b, _ in h.delivered)
    waits = [b.waited for b, _ in h.delivered]
    assert max(waits) == 2.5  # some batches did go by the time bound...
    assert all(w <= 2.5 for w in waits)  # ...and none later than it
    await h.batcher.stop()


async def test_results_are_delivered_in_dispatch_order_with_concurrent_batches() -> None:
    h = Harness(max_size=2, max_wait=0.0, concurrency=3)
    loop = asyncio.get_running_loop()
    h.gates = {seq: loop.create_future() for seq in range(3)}
    for value in range(6):
        h.batcher.put_nowait(Items([value]))
    await settle(lambda: h.batcher.queued == 0)
    h.gates[2].set_result(None)  # the last batch finishes first
    await settle()
    assert h.delivered == []
    h.gates[0].set_result(None)
    await settle(lambda: len(h.delivered) == 1)
    h.gates[1].set_result(None)
    await settle(lambda: len(h.delivered) == 3)
    assert [b.seq for b, _ in h.delivered] == [0, 1, 2]
    assert h.items() == [0, 1, 2, 3, 4, 5]
    await h.batcher.stop()


async def test_a_failing_batch_is_delivered_as_its_error_and_the_rest_go_on() -> None:
    def run(batch: Batch[Items]) -> None:
        if 3 in [x for p in batch.parts for x in p]:
            raise RuntimeError("model exploded")

    h = Harness(max_size=2, max_wait=0.0, run=run)
    for value in range(6):
        h.batcher.put_nowait(Items([value]))
    await settle(lambda: len(h.delivered) == 3)
    outcomes = [r for _, r in h.delivered]
    assert outcomes[0] == [0, 10]
    assert isinstance(outcomes[1], RuntimeError)
    assert str(outcomes[1]) == "model exploded"
    assert outcomes[2] == [40, 50]
    await h.batcher.stop()


async def test_parts_are_split_to_fit_and_keep_their_order() -> None:
    h = Harness(max_size=3, max_wait=0.0)
    h.batcher.put_nowait(Items(range(8)))
    await settle(lambda: h.batcher.queued == 0 and h.batcher.busy == 0)
    assert [b.size for b, _ in h.delivered] == [3, 3, 2]
    assert h.items() == list(range(8))
    await h.batcher.stop()


async def test_drain_dispatches_at_once_and_waits_for_delivery() -> None:
    h = Harness(max_size=100, max_wait=60.0)
    h.batcher.put_nowait(Items([1, 2, 3]))
    await asyncio.wait_for(h.batcher.drain(), timeout=5)
    assert h.items() == [1, 2, 3]
    assert h.delivered[0][0].waited == 0.0
    await h.batcher.stop()


async def test_put_waits_while_the_queue_is_full() -> None:
    h = Harness(max_size=4, max_wait=60.0, capacity=4)
    loop = asyncio.get_running_loop()
    h.gates = {0: loop.create_future()}
    await h.batcher.put(Items([1, 2, 3, 4]))  # dispatched, then blocked in the model
    await settle(lambda: h.batcher.queued == 0)
    await h.batcher.put(Items([5, 6, 7, 8]))  # fills the queue
    blocked = asyncio.ensure_future(h.batcher.put(Items([9])))
    await settle()
    assert not blocked.done()
    h.gates[0].set_result(None)  # the model frees up; batch 2 is taken; room again
    await asyncio.wait_for(blocked, timeout=5)
    await asyncio.wait_for(h.batcher.drain(), timeout=5)
    assert h.items() == list(range(1, 10))
    await h.batcher.stop()


def test_rejects_inconsistent_limits() -> None:
    async def run(batch: Batch[Items]) -> None: ...

    with pytest.raises(ValueError, match="capacity"):
        MicroBatcher(run, lambda b, r: None, max_size=10, max_wait=0.01, capacity=5)


async def test_an_event_that_aged_in_transit_is_not_held_again() -> None:
    h = Harness(max_size=100, max_wait=0.010)
    h.batcher.put_nowait(Items([1]), age=0.004)  # already 4 ms old: due in 6 ms
    await settle(lambda: h.clock.waiting == 1)
    h.clock.advance(0.005)
    await settle()
    assert h.delivered == []
    h.clock.advance(0.001)
    await settle(lambda: len(h.delivered) == 1)
    h.batcher.put_nowait(Items([2]), age=1.0)  # older than the bound: goes at once
    await settle(lambda: len(h.delivered) == 2)
    assert h.delivered[1][0].waited == 0.0  # the metric still counts time in the batcher
    await h.batcher.stop()
