"""The in-flight limit: shrinks while held and slow, grows back when fast, stays in bounds."""

from __future__ import annotations

from streams.kafka.admission import AdmissionLimit
from streams.kafka.flow import Flow
from streams.metrics import Metrics


class Ticks:
    """A clock moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limit(
    bound: int = 4096, target_ms: float = 20, floor: int = 512
) -> tuple[AdmissionLimit, Ticks]:
    clock = Ticks()
    return AdmissionLimit(bound, target_ms / 1000, floor, window_s=0.25, clock=clock), clock


def window(admission: AdmissionLimit, clock: Ticks, worst_s: float, *, held: bool) -> bool:
    """One window of batches, the slowest ``worst_s``; the last batch closes it."""
    if held:
        admission.held()
    admission.observe(worst_s / 2)
    clock.now += 0.25
    return admission.observe(worst_s)


def test_slow_batches_while_held_shrink_the_limit_in_proportion() -> None:
    admission, clock = limit()
    assert window(admission, clock, 0.040, held=True)  # twice the target: half
    assert admission.limit == 2048
    assert window(admission, clock, 0.025, held=True)  # 20/25 of it
    assert admission.limit == round(2048 * 0.8)


def test_a_window_shrinks_at_most_by_half_and_never_below_the_floor() -> None:
    admission, clock = limit()
    window(admission, clock, 1.0, held=True)  # 50x the target: still only half
    assert admission.limit == 2048
    for _ in range(5):
        window(admission, clock, 1.0, held=True)
    assert admission.limit == 512


def test_slow_batches_that_the_limit_did_not_cause_leave_it_alone() -> None:
    """A heavy model at light load: shrinking would only throttle the next burst."""
    admission, clock = limit()
    window(admission, clock, 0.040, held=True)
    assert not window(admission, clock, 0.100, held=False)
    assert admission.limit == 2048


def test_fast_batches_grow_the_limit_back_to_the_bound_a_quarter_at_a_time() -> None:
    admission, clock = limit()
    for _ in range(3):
        window(admission, clock, 1.0, held=True)
    assert admission.limit == 512
    window(admission, clock, 0.001, held=False)  # 20x under the target: a quarter more
    assert admission.limit == 640
    window(admission, clock, 0.019, held=True)  # just under it: in proportion
    assert admission.limit == round(640 * 20 / 19)
    for _ in range(20):
        window(admission, clock, 0.001, held=False)
    assert admission.limit == 4096


def test_the_limit_changes_once_per_window() -> None:
    admission, clock = limit()
    admission.held()
    for _ in range(100):
        clock.now += 0.001
        assert not admission.observe(1.0)
    assert admission.limit == 4096
    clock.now += 0.2
    assert admission.observe(0.001)  # the window's worst (1 s), not its last batch, counts
    assert admission.limit == 2048


def test_a_target_of_zero_keeps_the_fixed_bound() -> None:
    admission, clock = limit(target_ms=0)
    assert not window(admission, clock, 1.0, held=True)
    assert admission.limit == 4096


def test_the_flow_pauses_at_the_limit_and_resumes_below_a_quarter_of_it() -> None:
    metrics = Metrics.create()
    admission, clock = limit(bound=4096, floor=512)
    flow = Flow(4096, metrics, admission)
    assert metrics.in_flight_limit._value.get() == 4096
    flow.admit("p0", 0, list(range(1500)))
    assert not flow.paused
    admission.held()
    clock.now += 0.25
    flow.handed_over(0, 0.080)  # 4x the target while held: half
    assert flow.limit == 2048
    assert metrics.in_flight_limit._value.get() == 2048
    assert flow.room == 548
    flow.admit("p0", 0, list(range(1500, 2048)))
    assert flow.paused
    flow.handed_over(1536, 0.001)  # 512 still queued: not below a quarter of the limit
    assert flow.paused
    flow.handed_over(1, 0.001)
    assert not flow.paused  # 2,048 in flight, but most of them only wait for the broker
    assert flow.room == 2048 - 511
    flow.acknowledged(1537)
    flow.finish("p0", range(1537), flow.generation)
    assert flow.in_flight == 511
    assert not flow.paused


def test_events_waiting_for_the_broker_count_against_the_bound_only() -> None:
    flow = Flow(1000, Metrics.create(), None)
    flow.admit("p0", 0, list(range(1000)))
    flow.handed_over(1000, 0.001)
    assert flow.paused  # the bound holds everything
    assert flow.room == 0
    flow.acknowledged(751)
    flow.finish("p0", range(751), flow.generation)  # 249 left: below a quarter of it
    assert not flow.paused
    assert flow.room == 751
