"""The fallback ladder and its circuit breaker, with fake models and a fake clock."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from pipelines.fraud.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, RawFeatures
from streams.clock import FakeClock
from streams.scoring.inference import MAX_ABANDONED_THREADS, Inference
from streams.scoring.ladder import Breaker, BreakerState, Ladder, Outcome, Route

POISON = 666.0


class FakeModel:
    """Scores ``value / 1000``; raises for poison rows; can be broken or made to hang."""

    device = torch.device("cpu")

    def __init__(self, name: str) -> None:
        self.name, self.version = name, "1"
        self.broken = False
        self.hang = threading.Event()
        self.calls = 0

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def predict(self, raw: RawFeatures) -> np.ndarray:
        self.calls += 1
        if self.hang.is_set():
            time.sleep(0.5)
        if self.broken:
            raise RuntimeError(f"{self.name} is down")
        first = raw.numeric[:, 0]
        if np.any(first == POISON):
            raise ValueError("poison")
        return (first / 1000.0).astype(np.float32)


def raw_of(values: list[float]) -> RawFeatures:
    numeric = np.zeros((len(values), len(NUMERIC_FEATURES)), dtype=np.float32)
    numeric[:, 0] = values
    return RawFeatures(numeric, tuple(["x"] * len(values) for _ in CATEGORICAL_FEATURES))


def ladder(
    *, fallback: bool = True, default: float | None = 0.5, deadline: float | None = None
) -> tuple[Ladder, FakeModel, FakeModel, FakeClock]:
    clock = FakeClock()
    primary, lighter = FakeModel("primary"), FakeModel("lighter")
    built = Ladder(
        Inference(primary),  # type: ignore[arg-type]
        Inference(lighter) if fallback else None,  # type: ignore[arg-type]
        default_score=default,
        timeout=0.2,
        deadline=deadline,
        breaker=Breaker(failures=3, cooldown=10.0, clock=clock),
    )
    return built, primary, lighter, clock


def now_times(n: int) -> np.ndarray:
    return np.full(n, time.time())


async def test_the_primary_scores_and_poison_rows_become_dead_letters() -> None:
    lad, _, lighter, _ = ladder()
    outcome = await lad.score(raw_of([100.0, POISON, 300.0]), now_times(3))
    assert outcome.route.tolist() == [Route.PRIMARY, Route.FAILED, Route.PRIMARY]
    assert np.allclose(outcome.scores[[0, 2]], [0.1, 0.3])
    assert isinstance(outcome.failures[1], ValueError)
    assert lighter.calls == 0
    assert lad.breaker.state is BreakerState.CLOSED


async def test_a_broken_primary_fails_over_and_opens_the_breaker_then_probes() -> None:
    lad, primary, _, clock = ladder()
    primary.broken = True
    for _ in range(3):
        outcome = await lad.score(raw_of([100.0, 200.0]), now_times(2))
        assert outcome.route.tolist() == [Route.FALLBACK, Route.FALLBACK]
        assert np.allclose(outcome.scores, [0.1, 0.2])
    assert lad.breaker.state is BreakerState.OPEN
    calls = primary.calls
    await lad.score(raw_of([1.0]), now_times(1))
    assert primary.calls == calls  # open: the primary rests
    clock.advance(10.0)
    assert lad.breaker.state is BreakerState.HALF_OPEN
    primary.broken = False
    outcome = await lad.score(raw_of([5.0, 7.0]), now_times(2))  # the probe succeeds
    assert outcome.route.tolist() == [Route.PRIMARY, Route.PRIMARY]
    assert lad.breaker.state is BreakerState.CLOSED


async def test_a_failed_probe_reopens_the_breaker() -> None:
    lad, primary, _, clock = ladder()
    primary.broken = True
    for _ in range(3):
        await lad.score(raw_of([1.0, 2.0]), now_times(2))
    clock.advance(10.0)
    await lad.score(raw_of([1.0, 2.0]), now_times(2))
    assert lad.breaker.state is BreakerState.OPEN


async def test_a_slow_primary_times_out_to_the_fallback() -> None:
    lad, primary, _, _ = ladder()
    primary.hang.set()
    outcome = await lad.score(raw_of([100.0, 200.0]), now_times(2))
    assert outcome.route.tolist() == [Route.FALLBACK, Route.FALLBACK]
    assert outcome.seconds[("primary", "1", "cpu")] >= 0.2
    assert outcome.timeouts == {("primary", "1", "cpu"): 1}  # counted per model


async def test_without_any_model_the_default_score_or_a_dead_letter() -> None:
    lad, primary, _, _ = ladder(fallback=False, default=0.25)
    primary.broken = True
    outcome = await lad.score(raw_of([1.0, 2.0]), now_times(2))
    assert outcome.route.tolist() == [Route.DEFAULT, Route.DEFAULT]
    assert outcome.scores.tolist() == [0.25, 0.25]
    lad, primary, _, _ = ladder(fallback=False, default=None)
    primary.broken = True
    outcome = await lad.score(raw_of([1.0, 2.0]), now_times(2))
    assert outcome.route.tolist() == [Route.FAILED, Route.FAILED]
    assert set(outcome.failures) == {0, 1}


async def test_events_past_their_deadline_skip_the_primary() -> None:
    lad, primary, _, _ = ladder(deadline=1.0)
    times = np.array([time.time(), time.time() - 5.0, time.time()])
    outcome = await lad.score(raw_of([100.0, 200.0, 300.0]), times)
    assert outcome.route.tolist() == [Route.PRIMARY, Route.FALLBACK, Route.PRIMARY]
    assert outcome.deadline_missed == 1
    assert np.allclose(outcome.scores, [0.1, 0.2, 0.3])
    assert primary.calls == 1


async def test_a_lone_failing_event_is_a_dead_letter_but_counts_on_the_breaker() -> None:
    lad, _, _, _ = ladder()
    for _ in range(2):
        outcome = await lad.score(raw_of([POISON]), now_times(1))
        assert outcome.route.tolist() == [Route.FAILED]
    assert lad.breaker.state is BreakerState.CLOSED
    await lad.score(raw_of([1.0]), now_times(1))  # a success resets the count
    for _ in range(3):
        await lad.score(raw_of([POISON]), now_times(1))
    assert lad.breaker.state is BreakerState.OPEN


def test_breaker_rejects_a_second_probe_while_one_is_out() -> None:
    clock = FakeClock()
    breaker = Breaker(failures=1, cooldown=1.0, clock=clock)
    breaker.failure()
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()
    assert not breaker.allow()
    breaker.success()
    assert breaker.allow()


async def test_after_a_timeout_the_next_call_does_not_wait_behind_the_stuck_one() -> None:
    lad, primary, lighter, _ = ladder()
    primary.hang.set()  # this call sleeps 0.5 s, past the 0.2 s timeout
    outcome = await lad.score(raw_of([100.0]), now_times(1))
    assert outcome.route.tolist() == [Route.FALLBACK]
    primary.hang.clear()
    outcome = await lad.score(raw_of([200.0]), now_times(1))
    # Queued behind the stuck call it would have waited its 0.3 s left, past the timeout.
    assert outcome.route.tolist() == [Route.PRIMARY]
    assert np.allclose(outcome.scores, [0.2])
    assert lighter.calls == 1


class StuckModel(FakeModel):
    """Every call blocks until released."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = threading.Event()

    def predict(self, raw: RawFeatures) -> np.ndarray:
        self.calls += 1
        self.release.wait(10.0)
        return np.zeros(len(raw), dtype=np.float32)


def model_threads(name: str) -> int:
    return sum(t.name == f"streamscore-model-{name}" for t in threading.enumerate())


async def test_a_model_stuck_on_every_call_gets_a_bounded_number_of_threads() -> None:
    stuck = StuckModel("stuck")
    inference = Inference(stuck)  # type: ignore[arg-type]
    lad = Ladder(
        inference, None, default_score=0.5, timeout=0.05, deadline=None,
        breaker=Breaker(failures=3, cooldown=10.0, clock=FakeClock()),
    )  # fmt: skip
    raw = raw_of([1.0, 2.0])
    try:
        for _ in range(MAX_ABANDONED_THREADS + 3):
            outcome = Outcome.unscored(2)
            assert await lad.call(inference, raw, [0, 1], outcome) is None
            assert outcome.timeouts == {("stuck", "1", "cpu"): 1}
        # The first calls each ran on a thread of their own; past the cap they queued.
        assert stuck.calls == MAX_ABANDONED_THREADS + 1
        assert model_threads("stuck") == MAX_ABANDONED_THREADS + 1
    finally:
        stuck.release.set()
        inference.close()
    for thread in threading.enumerate():
        if thread.name == "streamscore-model-stuck":
            thread.join(5.0)
    assert model_threads("stuck") == 0  # released, the stuck threads end
