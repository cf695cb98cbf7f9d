"""The micro-batcher: gather events from every partition into model batches.

A batch is dispatched when it holds ``max_size`` events, or when its oldest
event has waited ``max_wait`` seconds (counted from its record timestamp when
the caller says how old it is), whichever comes first. While every
runner slot is busy (the model is computing), events keep gathering, so under
load batches grow toward ``max_size`` on their own (the dynamic batching of
Triton and Ray Serve). Results are delivered strictly in dispatch order, even
with several batches running at once, which is what keeps per-key order.

Items are *parts* (a run of consecutive events of one partition) rather than
single events: a part is split when it does not fit, so the cost per event is
nothing and the cost per batch is one small list. The batcher knows nothing of
Kafka or torch; time comes from an injected :class:`~streams.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, Self, TypeVar

from streams.clock import Clock, MonotonicClock

log = logging.getLogger(__name__)


class Part(Protocol):
    """A run of events that can be cut in two."""

    def __len__(self) -> int: ...

    def split(self, n: int) -> tuple[Self, Self]:
        """The first ``n`` events, and the rest."""
        ...


P = TypeVar("P", bound=Part)
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Batch(Generic[P]):
    """One model call's worth of events, in arrival order."""

    seq: int
    parts: list[P]
    size: int
    oldest: float  # clock time the oldest event arrived
    dispatched: float  # clock time the batch was handed to a runner

    @property
    def waited(self) -> float:
        """How long the oldest event waited for this batch to start."""
        return self.dispatched - self.oldest


@dataclass(slots=True)
class _Queued(Generic[P]):
    part: P
    arrived: float  # when it entered the batcher
    due: float  # when it must be dispatched at the latest


class MicroBatcher(Generic[P, R]):
    """Bounded queue + size/time policy + ordered delivery of results.

    ``run(batch)`` computes a batch (it may hand the work to a thread) and
    returns one result for the batch; ``deliver(batch, result_or_exception)``
    is called for every batch, in dispatch order, exactly once.
    """

    def __init__(
        self,
        run: Callable[[Batch[P]], Awaitable[R]],
        deliver: Callable[[Batch[P], R | Exception], None],
        *,
        max_size: int,
        max_wait: float,
        capacity: int,
        concurrency: int = 1,
        clock: Clock | None = None,
    ) -> None:
        if max_size < 1 or capacity < max_size or concurrency < 1 or max_wait < 0:
            raise ValueError("need max_size >= 1, capacity >= max_size, concurrency >= 1")
        self._run = run
        self._deliver = deliver
        self.max_size = max_size
        self.max_wait = max_wait
        self.capacity = capacity
        self._clock = clock or MonotonicClock()
        self._queue: deque[_Queued[P]] = deque()
        self._queued = 0
        self._slots = asyncio.Semaphore(concurrency)
        self._arrival = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._flushing = 0
        self._seq = 0
        self._next_delivery = 0
        self._finished: dict[int, tuple[Batch[P], R | Exception]] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None

    # -- feeding ---------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Events waiting for a batch."""
        return self._queued

    @property
    def busy(self) -> int:
        """Batches dispatched whose results are not delivered yet."""
        return self._seq - self._next_delivery

    async def put(self, part: P, age: float = 0.0) -> None:
        """Queue a part; waits while the queue is at capacity (a full part may exceed it).

        ``age``: how long its oldest event has already waited before it got here (since
        its record timestamp). The bound counts from then, so an event that spent the
        bound in transit is not kept waiting for company a second time.
        """
        while self._queued and self._queued + len(part) > self.capacity:
            self._space.clear()
            await self._space.wait()
        self.put_nowait(part, age)

    def put_nowait(self, part: P, age: float = 0.0) -> None:
        if not len(part):
            return
        now = self._clock.now()
        self._queue.append(_Queued(part, now, now - max(0.0, age) + self.max_wait))
        self._queued += len(part)
        self._idle.clear()
        self._arrival.set()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._dispatch_loop())

    async def drain(self) -> None:
        """Dispatch what is queued without waiting for the time bound; wait for delivery."""
        self._flushing += 1
        self._arrival.set()
        try:
            while not self._idle.is_set():
                if self.failure is not None:
                    raise self.failure
                await self._idle.wait()
            if self.failure is not None:
                raise self.failure
        finally:
            self._flushing -= 1

    async def stop(self) -> None:
        """Stop dispatching; cancel batches still running (drain first to finish them)."""
        tasks = [t for t in (self._loop_task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loop_task = None

    # -- dispatching -----------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        try:
            while True:
                await self._slots.acquire()
                try:
                    await self._wait_for_batch()
                except BaseException:
                    self._slots.release()
                    raise
                batch = self._take()
                task = asyncio.get_running_loop().create_task(self._execute(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: make it visible to health checks and drain()
            log.exception("micro-batcher stopped")
            self.failure = exc
            self._idle.set()

    async def _wait_for_batch(self) -> None:
        """Return once a batch is due: full, its oldest event at the bound, or draining."""
        clock = self._clock
        while True:
            self._arrival.clear()
            if self._queued >= self.max_size or (self._queued and self._flushing):
                return
            if not self._queued:
                await self._arrival.wait()
                continue
            deadline = min(queued.due for queued in self._queue)
            if clock.now() >= deadline:
                return
            await clock.wait(self._arrival, deadline)

    def _take(self) -> Batch[P]:
        parts: list[P] = []
        size = 0
        oldest = self._queue[0].arrived
        while self._queue and size < self.max_size:
            head = self._queue[0]
            room = self.max_size - size
            if len(head.part) <= room:
                self._queue.popleft()
                parts.append(head.part)
                size += len(head.part)
            else:
                first, rest = head.part.split(room)
                head.part = rest
                parts.append(first)
                size += room
        self._queued -= size
        if self._queued < self.capacity:
            self._space.set()
        batch = Batch(self._seq, parts, size, oldest, self._clock.now())
        self._seq += 1
        return batch

    async def _execute(self, batch: Batch[P]) -> None:
        try:
            result: R | Exception = await self._run(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the batch failed as a whole; its events learn why
            result = exc
        finally:
            self._slots.release()
        self._finished[batch.seq] = (batch, result)
        # Deliver in dispatch order: a later batch that finished first waits here.
        while self._next_delivery in self._finished:
            done, outcome = self._finished.pop(self._next_delivery)
            self._next_delivery += 1
            try:
                self._deliver(done, outcome)
            except Exception as exc:
                log.exception("delivering batch %d failed", done.seq)
                self.failure = exc
        if not self._queued and self._next_delivery == self._seq:
            self._idle.set()
