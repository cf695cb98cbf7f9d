"""The in-flight limit that keeps the worker's own latency at its target.

By Little's law an event waits in the worker about *in flight / drain rate*: with
the fixed bound of 4,096 and a drain of 75k events/s that is 55 ms, far past the
bounded wait. So the limit that pauses intake follows the measured latency
(fetch to score handed to the producer, the worst of each batch) instead:

- Every window, if the worst batch was slower than the target *while the limit
  held intake back*, the limit shrinks in proportion (at most by half): it is the
  queue in the worker that is too long, and a shorter one is what fixes it.
- If the worst batch stayed under the target, the limit grows again (at most by a
  quarter per window), up to ``STREAMSCORE_MAX_IN_FLIGHT``.
- A slow batch while the limit did not hold intake back (a heavy model, a pause
  of the process) says nothing about the queue and leaves the limit alone, so a
  slow model at light load cannot shrink the limit to where it throttles a later
  burst.

The limit never goes below two batches, so the stages can always overlap and
batches fill. As TCP's congestion window and Netflix's concurrency limits do, it
trades a little peak drain for a bounded wait; ``STREAMSCORE_LATENCY_TARGET_MS=0``
keeps the fixed bound (throughput first).
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: How long the limit keeps one setting before it looks at the latency again: long
#: enough to span many batches (and the events admitted under the last setting).
WINDOW_S = 0.25
_SHRINK_AT_MOST = 0.5
_GROW_AT_MOST = 1.25


class AdmissionLimit:
    """How many events may be in flight now, between ``floor`` and ``bound``."""

    def __init__(
        self,
        bound: int,
        target_s: float,
        floor: int,
        *,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bound = bound
        self.floor = min(max(1, floor), bound)
        self.target_s = target_s
        self.limit = bound
        self._window_s = window_s
        self._clock = clock
        self._since = clock()
        self._worst = 0.0
        self._held = False  # did the limit hold intake back in this window?

    @property
    def adaptive(self) -> bool:
        return self.target_s > 0 and self.floor < self.bound

    def held(self) -> None:
        """Intake reached the limit (and paused) in this window."""
        self._held = True

    def observe(self, worst_s: float) -> bool:
        """One batch handed to the producer, its oldest event ``worst_s`` after its fetch.

        Returns whether the limit changed.
        """
        if worst_s > self._worst:
            self._worst = worst_s
        now = self._clock()
        if now - self._since < self._window_s or not self.adaptive:
            return False
        worst, held = self._worst, self._held
        self._since, self._worst, self._held = now, 0.0, False
        if worst <= 0:
            return False
        ratio = self.target_s / worst
        if ratio < 1:
            if not held:
                return False
            factor = max(_SHRINK_AT_MOST, ratio)
        else:
            factor = min(_GROW_AT_MOST, ratio)
        limit = min(self.bound, max(self.floor, round(self.limit * factor)))
        if limit == self.limit:
            return False
        self.limit = limit
        return True
