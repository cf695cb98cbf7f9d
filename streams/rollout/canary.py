"""Canary membership by entity, and the watch that rolls a bad canary back.

Membership: an entity belongs to the canary when its *bucket*, the first
eight bytes of BLAKE2b over the UTF-8 ``entity_id`` modulo 10,000, is below
``percent x 100``. The hash is fixed by the algorithm, not by the process
(Python's ``hash()`` is salted per process), so every worker of every release
puts an entity in the same bucket; and because membership is "bucket below a
threshold", raising the percentage only moves entities from the primary to
the canary, never back.

The monitor compares the canary with the primary over a sliding window of
recent batches: the share of events each could not score, the model time
per event, and the distribution of their scores (the two-sample
Kolmogorov-Smirnov statistic). Each comparison waits for a minimum number of
events on both sides, so a handful of events cannot trigger a rollback.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Breach", "CanaryMonitor", "Thresholds"]


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When the canary is bad enough to roll back (see the settings of the same names)."""

    window_s: float = 60.0
    min_events: int = 200
    max_error_rate: float = 0.01  # canary error share above the primary's
    max_latency_ratio: float = 3.0  # canary model time per event over the primary's
    max_score_shift: float = 0.25  # Kolmogorov-Smirnov statistic between the score samples


@dataclass(frozen=True, slots=True)
class Breach:
    """Why the canary is rolled back: ``reason`` is a metric label, ``detail`` a sentence."""

    reason: str  # error_rate, latency, score_distribution
    detail: str


@dataclass(slots=True)
class _Sample:
    at: float
    events: int
    errors: int
    seconds: float
    scores: npt.NDArray[np.float64]


class _Side:
    """One model's recent batches."""

    def __init__(self) -> None:
        self.samples: deque[_Sample] = deque()

    def add(self, sample: _Sample, horizon: float) -> None:
        self.samples.append(sample)
        self._forget(horizon)

    def _forget(self, horizon: float) -> None:
        """Drop the batches older than the window."""
        while self.samples and self.samples[0].at < horizon:
            self.samples.popleft()

    def totals(self, horizon: float) -> tuple[int, int, float, npt.NDArray[np.float64]]:
        self._forget(horizon)
        events = sum(s.events for s in self.samples)
        errors = sum(s.errors for s in self.samples)
        seconds = sum(s.seconds for s in self.samples)
        scores = (
            np.concatenate([s.scores for s in self.samples])
            if self.samples
            else np.empty(0, dtype=np.float64)
        )
        return events, errors, seconds, scores


class CanaryMonitor:
    """Sliding-window comparison of canary and primary; says when to roll back."""

    #: Scores kept per batch for the distribution test (a random-free, even subsample).
    SCORES_PER_BATCH = 64

    def __init__(self, thresholds: Thresholds, clock: Callable[[], float] = time.monotonic):
        self.thresholds = thresholds
        self._clock = clock
        self._sides = {"canary": _Side(), "primary": _Side()}

    def reset(self) -> None:
        """Forget everything (a new canary, or none)."""
        self._sides = {"canary": _Side(), "primary": _Side()}

    def observe(
        self,
        side: str,
        *,
        events: int,
        errors: int,
        seconds: float,
        scores: npt.NDArray[np.float64],
    ) -> None:
        """One batch's share of ``side`` (``canary`` or ``primary``)."""
        if events <= 0:
            return
        now = self._clock()
        step = max(1, len(scores) // self.SCORES_PER_BATCH)
        kept = np.asarray(scores[::step], dtype=np.float64)
        self._sides[side].add(
            _Sample(now, events, errors, seconds, kept), now - self.thresholds.window_s
        )

    def breach(self) -> Breach | None:
        """The first threshold the canary crosses over the window, if any."""
        limits = self.thresholds
        horizon = self._clock() - limits.window_s
        c_events, c_errors, c_seconds, c_scores = self._sides["canary"].totals(horizon)
        p_events, p_errors, p_seconds, p_scores = self._sides["primary"].totals(horizon)
        if c_events < limits.min_events or p_events < limits.min_events:
            return None
        c_rate, p_rate = c_errors / c_events, p_errors / p_events
        if c_rate > p_rate + limits.max_error_rate:
            return Breach(
                "error_rate",
                f"canary failed for {c_rate:.1%} of {c_events} events against the primary's "
                f"{p_rate:.1%} (allowed: {limits.max_error_rate:.1%} more)",
            )
        c_latency, p_latency = c_seconds / c_events, p_seconds / p_events
        if p_latency > 0 and c_latency > p_latency * limits.max_latency_ratio:
            return Breach(
                "latency",
                f"canary model time {c_latency * 1e6:.0f} us per event, "
                f"{c_latency / p_latency:.1f}x the primary's {p_latency * 1e6:.0f} us "
                f"(allowed: {limits.max_latency_ratio:g}x)",
            )
        if len(c_scores) and len(p_scores):
            shift = ks_statistic(c_scores, p_scores)
            if shift > limits.max_score_shift:
                return Breach(
                    "score_distribution",
                    f"canary and primary score distributions differ by {shift:.2f} "
                    f"(Kolmogorov-Smirnov; allowed: {limits.max_score_shift:g})",
                )
        return None


def ks_statistic(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two CDFs."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))
