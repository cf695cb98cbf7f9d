"""Commit bookkeeping: the committable offset never passes an unfinished offset."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kafka.ordering import OffsetTracker


def test_commit_waits_for_the_lowest_unfinished_offset() -> None:
    t = OffsetTracker()
    assert t.register("p0", [10, 11, 12, 13]) == 0
    assert t.committable("p0") == 10
    t.finish("p0", [11, 13])  # out of order: a dead letter acked before a score
    assert t.committable("p0") == 10
    t.finish("p0", [10])
    assert t.committable("p0") == 12
    t.finish("p0", [12])
    assert t.committable("p0") == 14
    assert t.in_flight == 0


def test_nothing_to_commit_before_anything_is_registered() -> None:
    t = OffsetTracker()
    assert t.committable("p0") is None
    t.register("p0", [0, 1])
    t.finish("p0", [0, 1])
    assert t.committable("p0") == 2
    t.register("p0", [2])
    assert t.committable("p0") == 2  # 2 is in flight: the watermark stays
    t.finish("p0", [2])
    assert t.committable("p0") == 3


def test_gaps_between_chunks_are_allowed_and_repeats_are_skipped() -> None:
    t = OffsetTracker()
    t.register("p0", [0, 1, 2])
    assert t.register("p0", [1, 2, 5, 6]) == 2  # a re-read after a seek: skip 1 and 2
    assert t.pending("p0") == 5
    t.finish("p0", [0, 1, 2, 5, 6])
    assert t.committable("p0") == 7


def test_offsets_within_a_chunk_must_increase() -> None:
    t = OffsetTracker()
    with pytest.raises(ValueError, match="must increase"):
        t.register("p0", [3, 5, 4])


def test_partitions_are_independent_and_forget_drops_in_flight() -> None:
    t = OffsetTracker()
    t.register("p0", [0, 1])
    t.register("p1", [7])
    t.finish("p1", [7])
    assert (t.committable("p0"), t.committable("p1")) == (0, 8)
    assert t.in_flight == 2
    t.forget(["p0"])
    assert t.in_flight == 0
    assert t.committable("p0") is None
    t.finish("p0", [0, 1])  # a late acknowledgement of a forgotten partition is ignored
    assert t.partitions() == ["p1"]


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.integers(1, 6), min_size=1, max_size=12),
    gaps=st.lists(st.integers(0, 3), min_size=12, max_size=12),
    order=st.randoms(use_true_random=False),
)
def test_watermark_is_always_the_lowest_unfinished_offset(
    chunks: list[int], gaps: list[int], order: object
) -> None:
    t = OffsetTracker()
    offsets: list[int] = []
    nxt = 0
    for size, gap in zip(chunks, gaps, strict=False):
        nxt += gap
        chunk = list(range(nxt, nxt + size))
        nxt += size
        t.register("p", chunk)
        offsets += chunk
    finished: set[int] = set()
    todo = offsets[:]
    order.shuffle(todo)  # type: ignore[attr-defined]
    while todo:
        batch, todo = todo[:3], todo[3:]
        t.finish("p", batch)
        finished.update(batch)
        unfinished = [o for o in offsets if o not in finished]
        expected = unfinished[0] if unfinished else offsets[-1] + 1
        assert t.committable("p") == expected
        assert t.in_flight == len([o for o in offsets if o >= expected])
