"""The fallback ladder: primary model, then a lighter fallback, then a default score.

For each batch the primary scores what it can. Whatever it cannot goes one
rung down, never silently:

- events that already waited past ``STREAMSCORE_DEADLINE_MS`` skip the
  primary (counted as missed deadlines);
- a primary that raises for the whole batch, or answers later than
  ``STREAMSCORE_MODEL_TIMEOUT_MS``, hands the batch to the fallback and
  counts a failure on the circuit breaker; after ``STREAMSCORE_BREAKER_FAILURES``
  in a row the breaker opens and the primary rests for
  ``STREAMSCORE_BREAKER_COOLDOWN_MS``, then one batch probes it (half-open);
- single poison events (the primary fails for them and not their
  neighbours, or a batch of one fails) are dead letters with
  ``dlq.stage=model``: the input is at fault, not the model;
- the fallback's failures get the default score, or a dead letter when no
  default is configured.

A score from anything but the primary is ``degraded`` and names the model
(or ``default``) that produced it.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from models.inputs import ModelInput
from streams.clock import Clock, MonotonicClock
from streams.errors import InferenceError
from streams.scoring.inference import Inference, Scored

log = logging.getLogger(__name__)


class Route(enum.IntEnum):
    """Which path produced a score: the codes of :attr:`Outcome.route`.

    Codes from ``RULES`` on are the routing rules' models, in rule order.
    """

    PRIMARY = 0
    FALLBACK = 1
    DEFAULT = 2
    FAILED = 3
    CANARY = 4
    ESCALATED = 5
    RULES = 6


#: The contract's ``route`` of each code below ``Route.RULES`` (a rule's model is a primary).
ROUTE_NAMES = ("primary", "fallback", "default", "failed", "canary", "escalated")

#: The model key of :attr:`Outcome.seconds`: name, version, device.
ModelKey = tuple[str, str, str]


def model_key(inference: Inference) -> ModelKey:
    model = inference.model
    return (model.name, model.version, str(model.device))


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Breaker:
    """Opens after N consecutive failures; after a cooldown lets one probe through."""

    def __init__(self, failures: int, cooldown: float, clock: Clock | None = None) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self._clock = clock or MonotonicClock()
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False
        self.opened = 0  # how many times it opened

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._probing or self._clock.now() - self._opened_at >= self.cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """May the primary take this batch? (While half-open: only one probe at a time.)"""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        if self._opened_at is not None:
            log.warning("model circuit breaker closed: the primary model answers again")
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._consecutive += 1
        if self._probing or (self._opened_at is None and self._consecutive >= self.threshold):
            if self._opened_at is None:
                self.opened += 1
                log.error(
                    "model circuit breaker open after %d failures: scoring with the fallback",
                    self._consecutive,
                )
            self._opened_at = self._clock.now()
        self._probing = False


@dataclass(slots=True)
class Outcome:
    """One batch, row by row: the score, which rung produced it, or why there is none."""

    scores: npt.NDArray[np.float64]  # float64, so a configured default score stays exact
    route: npt.NDArray[np.int8]  # Route code per row
    failures: dict[int, Exception] = field(default_factory=dict)  # rows to dead-letter
    seconds: dict[ModelKey, float] = field(default_factory=dict)  # model time by model
    timeouts: dict[ModelKey, int] = field(default_factory=dict)  # calls past the model timeout
    deadline_missed: int = 0
    #: The model behind each route code of this batch (None: the default score, or none).
    models: list[Inference | None] = field(default_factory=list)
    escalation_failures: int = 0  # escalated events that kept their first score

    @classmethod
    def unscored(cls, n: int, models: Sequence[Inference | None] = ()) -> Outcome:
        """``n`` rows without a score yet; ``models`` by route code, padded to the fixed codes."""
        return cls(
            np.full(n, np.nan, dtype=np.float64),
            np.full(n, Route.FAILED, np.int8),
            models=[*models, *[None] * (Route.RULES - len(models))],
        )

    def take(self, rows: Sequence[int]) -> Outcome:
        """These rows only, renumbered from 0 (the model time and counts stay whole)."""
        index = {row: i for i, row in enumerate(rows)}
        return Outcome(
            self.scores[list(rows)],
            self.route[list(rows)],
            {index[r]: e for r, e in self.failures.items() if r in index},
            self.seconds,
            self.timeouts,
            self.deadline_missed,
            self.models,
            self.escalation_failures,
        )


class Ladder:
    """Scores batches down the ladder; owns the breaker."""

    def __init__(
        self,
        primary: Inference,
        fallback: Inference | None,
        *,
        default_score: float | None,
        timeout: float,
        deadline: float | None,
        breaker: Breaker,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.default_score = default_score
        self.timeout = timeout
        self.deadline = deadline
        self.breaker = breaker

    async def score(self, raw: ModelInput, record_times: npt.NDArray[np.float64]) -> Outcome:
        """``record_times``: each event's record timestamp, epoch seconds (for the deadline)."""
        n = len(raw)
        outcome = Outcome.unscored(n, [self.primary, self.fallback])
        rows = list(range(n))
        late: list[int] = []
        if self.deadline is not None and n:
            expired = (time.time() - record_times) > self.deadline
            if expired.any():
                late = np.flatnonzero(expired).tolist()
                rows = np.flatnonzero(~expired).tolist()
                outcome.deadline_missed = len(late)
        down = late
        if rows:
            if self.breaker.allow():
                down = down + await self._primary(raw, rows, outcome)
            else:
                down = down + rows
        if down:
            await self._fallback(raw, sorted(down), outcome)
        return outcome

    async def _primary(self, raw: ModelInput, rows: list[int], outcome: Outcome) -> list[int]:
        """Score ``rows`` with the primary; return the rows the next rung must take."""
        scored = await self.call(self.primary, raw, rows, outcome)
        if scored is None:  # timed out, or failed outside its own retries
            self.breaker.failure()
            return rows
        if len(scored.failures) == len(rows):
            self.breaker.failure()
            if len(rows) > 1:  # it failed for every event: the model, not the input
                return rows
            # One event alone: it may be poison or the model may be down. It is dead-lettered
            # as poison; if the model is down, the breaker opens after a few of these.
        else:
            self.breaker.success()
        self.take(outcome, rows, scored, Route.PRIMARY)
        for position, exc in scored.failures.items():  # isolated: the input is at fault
            outcome.failures[rows[position]] = exc
        return []

    async def _fallback(self, raw: ModelInput, rows: list[int], outcome: Outcome) -> None:
        rest = rows
        if self.fallback is not None:
            scored = await self.call(self.fallback, raw, rows, outcome)
            if scored is not None:
                self.take(outcome, rows, scored, Route.FALLBACK)
                rest = [rows[p] for p in sorted(scored.failures)]
        if not rest:
            return
        if self.default_score is not None:
            outcome.scores[rest] = self.default_score
            outcome.route[rest] = Route.DEFAULT
            for row in rest:
                outcome.failures.pop(row, None)
        else:
            for row in rest:
                outcome.failures.setdefault(row, InferenceError("no model could score this event"))

    async def call(
        self, inference: Inference, raw: ModelInput, rows: list[int], outcome: Outcome
    ) -> Scored | None:
        """``inference`` on ``rows`` of ``raw`` within the model timeout; None if it failed."""
        subset = raw if len(rows) == len(raw) else raw.select(rows)
        started = time.perf_counter()
        key = model_key(inference)
        try:
            scored = await inference.score_within(subset, self.timeout)
        except TimeoutError:
            log.error(
                "model %s did not answer within %.0f ms", inference.model.name, self.timeout * 1e3
            )
            outcome.timeouts[key] = outcome.timeouts.get(key, 0) + 1
            scored = None
        except Exception as exc:  # a failure outside the isolating retry: treat as systemic
            log.error("model %s failed: %r", inference.model.name, exc)
            scored = None
        spent = scored.seconds if scored is not None else time.perf_counter() - started
        outcome.seconds[key] = outcome.seconds.get(key, 0.0) + spent
        return scored

    @staticmethod
    def take(outcome: Outcome, rows: Sequence[int], scored: Scored, route: int) -> None:
        """Write ``scored`` (scores of ``rows``, in order) into ``outcome`` where it succeeded."""
        if not scored.failures:  # the usual batch: no per-row check
            index: npt.NDArray[np.intp] | list[int] = np.asarray(rows, dtype=np.intp)
            outcome.scores[index] = scored.scores
            outcome.route[index] = route
            return
        ok = [p for p in range(len(rows)) if p not in scored.failures]
        targets = [rows[p] for p in ok]
        outcome.scores[targets] = scored.scores[ok]
        outcome.route[targets] = route
