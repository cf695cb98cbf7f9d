"""The vectorised state walk against a plain loop over events (hypothesis).

The walk runs chunk by chunk, carrying its final records from one chunk to the
next as the worker does through the state table; the reference loop walks the
whole stream at once, recomputing every aggregate from the events it counted.
Chunks may repeat events already counted (a redelivery after a crash): they
must see the state and change nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.pipeline.errors import PipelineError
from streams.pipeline.state import (
    Count,
    Last,
    Max,
    Mean,
    Min,
    SincePrevious,
    StateLayout,
    Sum,
    Window,
)
from streams.pipeline.walk import walk

LAYOUT = StateLayout(
    {
        "n": Count(),
        "n_decayed": Count(half_life=50.0),
        "total": Sum("x"),
        "total_decayed": Sum("x", half_life=10.0),
        "mean": Mean("x"),
        "mean_decayed": Mean("y", half_life=30.0),
        "low": Min("x"),
        "high": Max("y"),
        "last": Last("y"),
        "gap": SincePrevious(),
    },
    Window(3, fields=("x", "y")),
)


def reference(
    layout: StateLayout,
    events: Sequence[tuple[str, int, float, float, float]],
) -> tuple[dict[str, list[float]], list[list[list[float]]], list[int]]:
    """Per event (entity, offset, time, x, y): its state before it, recomputed from scratch."""
    counted: dict[str, list[tuple[int, float, dict[str, float]]]] = {}
    out: dict[str, list[float]] = {name: [] for name in layout.aggregates}
    windows: list[list[list[float]]] = []
    lengths: list[int] = []
    for entity, offset, time, x, y in events:
        history = counted.setdefault(entity, [])
        last_offset = max((o for o, _, _ in history), default=-1)
        last_time = max((t for _, t, _ in history), default=-math.inf)
        stale = offset <= last_offset
        now = max(last_time, time)
        for name, aggregate in layout.aggregates.items():
            pairs = [(t, row[aggregate.field] if aggregate.field else 1.0) for _, t, row in history]
            h = aggregate.half_life
            weights = [1.0 if h is None else 2.0 ** (-(now - t) / h) for t, _ in pairs]
            values = [v for _, v in pairs]
            kind = aggregate.kind
            if kind == "count":
                out[name].append(sum(weights))
            elif kind == "sum":
                out[name].append(sum(w * v for w, v in zip(weights, values, strict=True)))
            elif kind == "mean":
                total = sum(weights)
                dot = sum(w * v for w, v in zip(weights, values, strict=True))
                out[name].append(dot / total if total > 0 else math.nan)
            elif kind == "min":
                out[name].append(min(values, default=math.nan))
            elif kind == "max":
                out[name].append(max(values, default=math.nan))
            elif kind == "last":
                out[name].append(values[-1] if values else math.nan)
            elif kind == "since":
                out[name].append(math.nan if stale or not history else max(0.0, time - last_time))
        assert layout.window is not None
        size = layout.window.size
        recent = [[row[f] for f in layout.window.fields] for _, _, row in history[-size:]]
        lengths.append(len(recent))
        windows.append([[0.0, 0.0]] * (size - len(recent)) + recent)
        if not stale:
            history.append((offset, now, {"x": x, "y": y}))
    return out, windows, lengths


def chunked(
    layout: StateLayout,
    chunks: Sequence[Sequence[tuple[str, int, float, float, float]]],
) -> tuple[dict[str, list[float]], list[list[list[float]]], list[int]]:
    """The vectorised walk, chunk by chunk, state carried as encoded records (as in a table)."""
    table: dict[str, bytes] = {}
    out: dict[str, list[float]] = {name: [] for name in layout.aggregates}
    windows: list[list[list[float]]] = []
    lengths: list[int] = []
    for chunk in chunks:
        if not chunk:
            continue
        entities = [e[0] for e in chunk]
        distinct = list(dict.fromkeys(entities))
        stored, bad = layout.decode([table.get(e) for e in distinct])
        assert not bad.any()
        index = {e: i for i, e in enumerate(distinct)}
        walked = walk(
            layout,
            np.array([index[e] for e in entities], dtype=np.int64),
            np.array([e[1] for e in chunk], dtype=np.int64),
            np.array([e[2] for e in chunk]),
            {"x": np.array([e[3] for e in chunk]), "y": np.array([e[4] for e in chunk])},
            stored,
        )
        for name, values in walked.state.items():
            out[name].extend(values.tolist())
        assert walked.window is not None
        assert walked.length is not None
        windows.extend(walked.window.tolist())
        lengths.extend(walked.length.tolist())
        table.update(zip(distinct, layout.encode(walked.final), strict=True))
    return out, windows, lengths


def close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


@st.composite
def streams_of_events(draw: Any) -> list[list[tuple[str, int, float, float, float]]]:
    """Chunks of events in offset order per entity, some chunks repeating earlier events."""
    n = draw(st.integers(1, 60))
    entities = draw(st.lists(st.sampled_from("abcde"), min_size=n, max_size=n))
    # Spans within a few half-lives take the prefix-sum path, longer ones the rounds.
    span = draw(st.sampled_from([40.0, 500.0]))
    times = draw(st.lists(st.floats(0, span, allow_nan=False), min_size=n, max_size=n))
    values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
    xs = draw(st.lists(values, min_size=n, max_size=n))
    ys = draw(st.lists(values, min_size=n, max_size=n))
    events = [
        (e, i, t, x, y) for i, (e, t, x, y) in enumerate(zip(entities, times, xs, ys, strict=True))
    ]
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=6))))
    chunks: list[list[tuple[str, int, float, float, float]]] = []
    start = 0
    for cut in [*cuts, n]:
        chunks.append(events[start:cut])
        if draw(st.booleans()) and chunks[-1]:  # a redelivery: re-read part of this chunk
            back = draw(st.integers(0, len(chunks[-1]) - 1))
            chunks.append(events[start + back : cut])
        start = cut
    return chunks


@settings(max_examples=300, deadline=None)
@given(streams_of_events())
def test_the_walk_gives_each_event_what_a_plain_loop_gives(
    chunks: list[list[tuple[str, int, float, float, float]]],
) -> None:
    flat = [event for chunk in chunks for event in chunk]
    want, want_windows, want_lengths = reference(LAYOUT, flat)
    got, got_windows, got_lengths = chunked(LAYOUT, chunks)
    for name in LAYOUT.aggregates:
        for i, (a, b) in enumerate(zip(got[name], want[name], strict=True)):
            assert close(a, b), (name, i, a, b, flat[i])
    assert got_lengths == want_lengths
    for got_window, want_window in zip(got_windows, want_windows, strict=True):
        assert np.allclose(got_window, want_window)


def test_a_redelivered_event_sees_the_state_and_never_counts_twice() -> None:
    first = [("a", 0, 10.0, 1.0, 1.0), ("a", 1, 20.0, 3.0, 3.0)]
    again = [("a", 1, 20.0, 3.0, 3.0), ("a", 2, 25.0, 5.0, 5.0)]  # 1 is read again
    got, _, lengths = chunked(LAYOUT, [first, again])
    assert got["n"] == [0, 1, 2, 2]  # the repeat sees both counted, the next one too
    assert math.isnan(got["gap"][2])  # a redelivery's time since the previous is unknown
    assert got["gap"][3] == 5.0
    assert got["mean"][3] == 2.0
    assert lengths == [0, 1, 2, 2]


def test_an_empty_chunk_walks_to_nothing_and_keeps_the_stored_state() -> None:
    stored = LAYOUT.empty(2)
    stored["seen"] = [3, 4]
    none, floats = np.zeros(0, np.int64), np.zeros(0)
    walked = walk(LAYOUT, none, none, floats, {"x": floats, "y": floats}, stored)
    assert set(walked.state) == set(LAYOUT.aggregates)
    assert all(len(values) == 0 for values in walked.state.values())
    assert walked.window is not None
    assert walked.window.shape == (0, 3, 2)
    assert walked.final["seen"].tolist() == [3, 4]


def test_decay_over_spans_of_a_thousand_half_lives() -> None:
    layout = StateLayout({"n": Count(half_life=1.0), "s": Sum("x", half_life=1.0)}, None)
    times = np.array([0.0, 1000.0, 1001.0, 3000.0])  # 2**-1000 would not survive scaling
    stored, _ = layout.decode([None])
    walked = walk(layout, np.zeros(4, np.int64), np.arange(4), times, {"x": np.ones(4)}, stored)
    assert walked.state["n"].tolist() == [0.0, 2.0**-1000, pytest.approx(0.5 + 2.0**-1001), 0.0]
    assert walked.final["n.value"][0] == 1.0
    assert walked.final["s.value"][0] == 1.0


def test_an_undecodable_record_is_marked_and_starts_over() -> None:
    stored, bad = LAYOUT.decode([b"short", None, LAYOUT.encode(LAYOUT.empty(1))[0]])
    assert bad.tolist() == [True, False, False]
    other = StateLayout({"n": Count()}, None)
    assert LAYOUT.decode(other.encode(other.empty(1)))[1].tolist() == [True]
    assert stored["seen"].tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Sum(""), "needs the event field"),
        (lambda: Min("x", half_life=3), "unexpected keyword"),
        (lambda: Count(half_life=-1.0), "positive number of seconds"),
        (lambda: Window(0, ("x",)), "from 1 to"),
        (lambda: Window(3), "needs the event fields"),
        (lambda: StateLayout({"a b": Count()}, None), "must be an identifier"),
        (lambda: StateLayout({"a": "count"}, None), "not an aggregate"),  # type: ignore[dict-item]
    ],
)
def test_declarations_are_refused_with_the_reason(make: Any, message: str) -> None:
    with pytest.raises((PipelineError, TypeError), match=message):
        make()
