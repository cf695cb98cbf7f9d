"""Time for the batcher: the real monotonic clock, and a controllable one for tests.

The batcher never calls ``time`` or ``asyncio.sleep`` itself; it asks a clock
for ``now()`` and to ``wait(event, deadline)``. With :class:`FakeClock` a test
moves time by hand, so size and time triggers are checked exactly, without
sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def wait(self, event: asyncio.Event, deadline: float) -> None:
        """Return when ``event`` is set or ``now()`` reaches ``deadline``, whichever is first."""
        ...


class MonotonicClock:
    """The real clock (``time.monotonic``)."""

    def now(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, deadline: float) -> None:
        if event.is_set():
            return
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


class FakeClock:
    """A clock that only moves when :meth:`advance` is called."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every waiter whose deadline has come."""
        self._now += seconds
        for deadline, future in self._sleepers:
            if deadline <= self._now and not future.done():
                future.set_result(None)

    @property
    def waiting(self) -> int:
        """How many waits are pending (lets a test know the batcher went to sleep)."""
        return sum(1 for _, future in self._sleepers if not future.done())

    async def wait(self, event: asyncio.Event, deadline: float) -> None:
        if event.is_set() or self._now >= deadline:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (deadline, future)
        self._sleepers.append(entry)
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait((future, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            self._sleepers.remove(entry)
