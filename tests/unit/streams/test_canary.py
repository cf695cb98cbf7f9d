"""Canary membership (stable, sticky, monotone) and the sliding-window canary watch."""

from __future__ import annotations

import numpy as np

from streams.rollout.canary import CanaryMonitor, Thresholds, ks_statistic
from streams.scoring.cohorts import BUCKETS, bucket, members

ENTITIES = [f"acct-{i}" for i in range(20_000)]


def test_buckets_are_fixed_by_the_algorithm_not_the_process() -> None:
    # Values pinned once: a change here moves entities between canary and primary in
    # every deployment, so it must be deliberate.
    assert [bucket(e) for e in ("acct-0", "acct-1", "acct-42", "é-ü")] == [8609, 1560, 5428, 9129]
    assert all(0 <= bucket(e) < BUCKETS for e in ENTITIES[:1000])


def test_the_share_is_close_to_the_percentage() -> None:
    for percent in (1.0, 5.0, 25.0, 50.0, 100.0):
        share = members(ENTITIES, percent).mean()
        assert abs(share - percent / 100) < 0.01, (percent, share)


def test_raising_the_percentage_only_moves_entities_to_the_canary() -> None:
    previous = members(ENTITIES, 5.0)
    for percent in (5.0, 10.0, 25.0, 50.0, 75.0, 100.0):
        now = members(ENTITIES, percent)
        assert not (previous & ~now).any()  # nobody left the canary
        assert np.array_equal(now, members(ENTITIES, percent))  # sticky at a fixed percentage
        previous = now


def test_membership_is_the_same_in_another_interpreter() -> None:
    import subprocess
    import sys

    script = "from streams.scoring.cohorts import bucket; " + (
        "print([bucket(f'acct-{i}') for i in range(50)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )  # fmt: skip
    assert out.stdout.strip() == str([bucket(f"acct-{i}") for i in range(50)])


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def monitor(**limits: float) -> tuple[CanaryMonitor, Clock]:
    clock = Clock()
    thresholds = Thresholds(**{"window_s": 60.0, "min_events": 100, **limits})  # type: ignore[arg-type]
    return CanaryMonitor(thresholds, clock), clock


def feed(
    mon: CanaryMonitor, side: str, *, batches: int, errors: int = 0, seconds: float = 0.01,
    scores: np.ndarray | None = None,
) -> None:  # fmt: skip
    rng = np.random.default_rng(len(side))
    for _ in range(batches):
        sample = scores if scores is not None else rng.uniform(0, 0.2, 50)
        mon.observe(side, events=50, errors=errors, seconds=seconds, scores=sample)


def test_no_judgement_below_the_minimum_sample() -> None:
    mon, _ = monitor()
    feed(mon, "primary", batches=10)
    feed(mon, "canary", batches=1, errors=50)  # 100% errors, but only 50 events
    assert mon.breach() is None


def test_a_canary_that_fails_more_than_the_primary_is_caught() -> None:
    mon, _ = monitor(max_error_rate=0.01)
    feed(mon, "primary", batches=10)
    feed(mon, "canary", batches=4, errors=5)  # 10% failures
    breach = mon.breach()
    assert breach is not None
    assert breach.reason == "error_rate"
    assert "10.0%" in breach.detail


def test_a_slow_canary_is_caught() -> None:
    mon, _ = monitor(max_latency_ratio=3.0)
    feed(mon, "primary", batches=10, seconds=0.01)
    feed(mon, "canary", batches=4, seconds=0.05)
    breach = mon.breach()
    assert breach is not None
    assert breach.reason == "latency"


def test_a_canary_scoring_differently_is_caught_and_a_similar_one_is_not() -> None:
    mon, _ = monitor(max_score_shift=0.25)
    feed(mon, "primary", batches=10)
    feed(mon, "canary", batches=4)
    assert mon.breach() is None
    feed(mon, "canary", batches=20, scores=np.full(50, 0.9))
    breach = mon.breach()
    assert breach is not None
    assert breach.reason == "score_distribution"


def test_old_batches_leave_the_window() -> None:
    mon, clock = monitor()
    feed(mon, "primary", batches=10)
    feed(mon, "canary", batches=4, errors=50)
    assert mon.breach() is not None
    clock.now = 61.0
    feed(mon, "primary", batches=10)
    feed(mon, "canary", batches=4)
    assert mon.breach() is None


def test_ks_statistic() -> None:
    a = np.linspace(0, 1, 101)
    assert ks_statistic(a, a) == 0.0
    assert ks_statistic(a, a + 2.0) == 1.0
