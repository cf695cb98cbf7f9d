"""The state walk: each event of a chunk gets its entity's state as it was just before it.

One function, :func:`walk`, used by the worker, ``pipeline check`` and
``pipeline features`` alike, so that a model is trained on exactly what the
worker computes. It is vectorised over the chunk: the events are grouped by
entity (a stable sort, so each entity's events stay in offset order), and every
aggregate is a segmented scan over the groups in numpy (prefix sums for counts,
sums and means, decayed ones weighted by ``2**(t/half_life)``, prefix maxima and
minima by rank, the window a gather from the entity's stored window followed by
its events). No Python code runs per event.

Redelivery: an event whose offset is not above the offset the stored state
last counted was counted already. It sees the stored state and changes
nothing (its time since the previous event is unknown, not 0), and since an
entity's events are in offset order these come first in its group. The state
is written back all the same (after a crash the local store can be ahead of
the changelog; this is how the changelog catches up).

``tests/unit/pipeline/test_walk.py`` holds it to a plain loop over events (hypothesis).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streams.pipeline.state import StateLayout

__all__ = ["Walked", "walk"]

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

#: Beyond this many half-lives between an entity's first and last event in one chunk, the
#: scaled prefix sums would lose precision: such a chunk is walked round by round instead.
_MAX_EXPONENT = 16.0


@dataclass(frozen=True, slots=True)
class Walked:
    """What a walk gives: per event, the state before it; per entity, the state after all."""

    state: dict[str, Floats]  # aggregate name -> value before each event (chunk order)
    window: Floats | None  # (n, size, fields): the entity's last events before, most recent last
    length: Ints | None  # (n,): how many entries of each window are real (the rest are 0)
    final: npt.NDArray[np.void]  # one record per entity of ``entities``, after the chunk
    stale: npt.NDArray[np.bool_]  # per event: a redelivery (counted before; changed nothing)


def walk(
    layout: StateLayout,
    groups: Ints,
    offsets: Ints,
    times: Floats,
    columns: Mapping[str, Floats],
    stored: npt.NDArray[np.void],
) -> Walked:
    """Walk a chunk of events (any entities, each entity's in offset order).

    ``groups[i]``: the index of event ``i``'s entity in ``stored`` (one record per
    distinct entity, :meth:`StateLayout.empty` for one never seen); ``columns``:
    the float64 values of the fields the layout reads.
    """
    n = len(groups)
    n_groups = len(stored)
    if n == 0:  # an empty chunk (every record of it a dead letter): nothing moves
        nothing = np.zeros(0)
        size = (0, layout.window.size, len(layout.window.fields)) if layout.window else None
        return Walked(
            {name: nothing for name in layout.aggregates},
            None if size is None else np.zeros(size),
            None if size is None else np.zeros(0, np.int64),
            stored.copy(),
            np.zeros(0, np.bool_),
        )
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    t = times[order].astype(np.float64)
    off = offsets[order]
    first = np.ones(n, dtype=np.bool_)
    first[1:] = g[1:] != g[:-1]
    starts = np.flatnonzero(first)
    seg = np.cumsum(first) - 1  # segment index of each position
    start_of = starts[seg]

    last_offset = stored["last_offset"][g]
    fresh = off > last_offset
    stale_sorted = ~fresh
    stored_time = stored["last_time"][g]
    seen = stored["seen"][g] > 0

    # The latest time before each event: the stored one, then earlier fresh events'.
    fresh_time = np.where(fresh, t, -np.inf)
    before_time = np.maximum(stored_time, _exclusive_cummax(fresh_time, seg, start_of))
    now = np.maximum(before_time, t)  # the time an aggregate is decayed to for this event
    fresh_count = _exclusive_cumsum(fresh.astype(np.float64), seg, start_of)
    has_history = seen | (fresh_count > 0)

    out: dict[str, Floats] = {}
    finals: dict[str, Floats] = {}
    last_index = np.flatnonzero(np.r_[first[1:], True])  # each segment's last position
    # The time the state is at after the chunk: the latest counted event's.
    final_time = np.maximum(stored_time, np.maximum(before_time, fresh_time))[last_index]
    for name, aggregate in layout.aggregates.items():
        kind = aggregate.kind
        x = (
            columns[aggregate.field][order].astype(np.float64)
            if aggregate.field is not None
            else np.ones(n)
        )
        if kind in ("count", "sum", "mean"):
            value_key = f"{name}.value" if kind != "mean" else f"{name}.sum"
            scan = _Scan(seg, start_of, last_index, stored_time, now, final_time)
            values, final_values = scan.decayed(
                np.where(fresh, x, 0.0), stored[value_key][g], aggregate.half_life
            )
            if kind == "mean":
                weights, final_weights = scan.decayed(
                    fresh.astype(np.float64), stored[f"{name}.weight"][g], aggregate.half_life
                )
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[name] = np.where(weights > 0, values / weights, np.nan)
                finals[f"{name}.sum"] = final_values
                finals[f"{name}.weight"] = final_weights
            else:
                out[name] = values
                finals[value_key] = final_values
        elif kind in ("min", "max"):
            sign = 1.0 if kind == "max" else -1.0
            contributed = np.where(fresh, sign * x, -np.inf)
            running = np.maximum(
                sign * stored[f"{name}.value"][g], _exclusive_cummax(contributed, seg, start_of)
            )
            out[name] = np.where(np.isfinite(running), sign * running, np.nan)
            inclusive = np.maximum(running, contributed)
            finals[f"{name}.value"] = sign * inclusive[last_index]
        elif kind == "last":
            index = np.where(fresh, np.arange(n), -1)
            previous = _exclusive_cummax(index.astype(np.float64), seg, start_of)
            stored_last = stored[f"{name}.value"][g]
            picked = x[np.maximum(previous, 0).astype(np.int64)]
            out[name] = np.where(previous >= 0, picked, stored_last)
            last_fresh = np.maximum(previous, index)[last_index]
            finals[f"{name}.value"] = np.where(
                last_fresh >= 0, x[np.maximum(last_fresh, 0).astype(np.int64)],
                stored_last[last_index],
            )  # fmt: skip
        elif kind == "since":
            since = np.maximum(t - before_time, 0.0)
            out[name] = np.where(has_history & fresh, since, np.nan)

    window = length = final_window = None
    if layout.window is not None:
        window, length, final_window = _window(
            layout, stored, columns, order, g, fresh, seg, starts, fresh_count, n_groups
        )

    # Final records, one per entity (entities with no event in the chunk keep theirs).
    final = stored.copy()
    touched = g[last_index]
    counted = _segment_sums(fresh.astype(np.int64), starts)
    final["seen"][touched] += counted
    max_offset = np.maximum.reduceat(np.where(fresh, off, -1), starts) if n else off
    final["last_offset"][touched] = np.maximum(final["last_offset"][touched], max_offset)
    max_time = np.maximum.reduceat(fresh_time, starts) if n else t
    final["last_time"][touched] = np.maximum(final["last_time"][touched], max_time)
    for column, values in finals.items():
        final[column][touched] = values
    if final_window is not None:
        final["window"][touched] = final_window

    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    state = {name: values[inverse] for name, values in out.items()}
    if window is not None and length is not None:
        window, length = window[inverse], length[inverse]
    return Walked(state, window, length, final, stale_sorted[inverse])


def _exclusive_cummax(x: Floats, seg: Ints, start_of: Ints) -> Floats:
    """Per position, the max of ``x`` over the earlier positions of its segment (-inf: none).

    A segmented scan in numpy: values are ranked, and a rank offset by its segment
    (segments are contiguous and ascending) is accumulated with one ``maximum``.
    """
    n = len(x)
    if n == 0:
        return x.copy()
    shifted = np.empty(n)
    shifted[0] = -np.inf
    shifted[1:] = x[:-1]
    shifted[start_of == np.arange(n)] = -np.inf  # nothing before a segment's first
    ranks = np.empty(n, dtype=np.int64)
    by_value = np.argsort(shifted, kind="stable")
    ranks[by_value] = np.arange(n)
    keys = np.maximum.accumulate(seg * n + ranks)
    return shifted[by_value[keys - seg * n]]


def _exclusive_cumsum(x: Floats, seg: Ints, start_of: Ints) -> Floats:
    """Per position, the sum of ``x`` over the earlier positions of its segment."""
    total = np.cumsum(x) - x
    return total - total[start_of]


def _segment_sums(x: Ints, starts: Ints) -> Ints:
    return np.add.reduceat(x, starts) if len(x) else x


@dataclass(frozen=True, slots=True)
class _Scan:
    """The segments of a sorted chunk and their times, for (decayed) prefix sums."""

    seg: Ints
    start_of: Ints
    last_index: Ints
    stored_time: Floats  # per position: its entity's stored time (-inf: never seen)
    now: Floats  # per position: the time its event's view is decayed to
    final_time: Floats  # per segment: the time the final state is at

    def decayed(
        self, contributions: Floats, stored: Floats, half_life: float | None
    ) -> tuple[Floats, Floats]:
        """A (decayed) sum before each event, and each segment's after its last event."""
        seg, start_of, last_index = self.seg, self.start_of, self.last_index
        if half_life is None:
            before = stored + _exclusive_cumsum(contributions, seg, start_of)
            return before, before[last_index] + contributions[last_index]
        # The stored value decayed to the segment's first event (a factor <= 1), then each
        # event's contribution scaled up to the first event's time, x_j * 2**((t_j - t_0)/h),
        # summed, and scaled back by 2**(-(t_i - t_0)/h). Within a chunk an entity's span
        # is short next to a half-life; where it is not, the factors would cost precision
        # (the prefix sums run across entities), so such a chunk goes round by round.
        known = np.isfinite(self.stored_time)
        first_now = self.now[start_of]
        with np.errstate(over="ignore"):
            base = np.where(
                known, stored * np.exp2(-(first_now - self.stored_time) / half_life), 0.0
            )
        exponent = (self.now - first_now) / half_life
        final_exponent = (self.final_time - first_now[last_index]) / half_life
        if len(exponent) and max(np.abs(exponent).max(), final_exponent.max()) > _MAX_EXPONENT:
            return self._rounds(contributions, base, half_life)
        grown = contributions * np.exp2(exponent)
        sums = base + _exclusive_cumsum(grown, seg, start_of)
        before = sums * np.exp2(-exponent)
        after = (sums[last_index] + grown[last_index]) * np.exp2(-final_exponent)
        return before, after

    def _rounds(
        self, contributions: Floats, base: Floats, half_life: float
    ) -> tuple[Floats, Floats]:
        """:meth:`decayed` as a recurrence: round k takes every entity's k-th event at once.

        Exact for any span (each step decays by the gap since the previous event); it
        costs one round per event of the busiest entity, so it is the fallback only.
        """
        n = len(contributions)
        rank = np.arange(n) - self.start_of
        by_rank = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(int(rank.max()) + 2))
        value = base[self.last_index].copy()  # per segment (every segment has a first event)
        time = self.now[self.start_of][self.last_index].copy()
        before = np.empty(n)
        for k in range(len(bounds) - 1):
            index = by_rank[bounds[k] : bounds[k + 1]]
            s = self.seg[index]
            value[s] *= np.exp2(-(self.now[index] - time[s]) / half_life)
            time[s] = self.now[index]
            before[index] = value[s]
            value[s] += contributions[index]
        return before, value * np.exp2(-(self.final_time - time) / half_life)


def _window(
    layout: StateLayout,
    stored: npt.NDArray[np.void],
    columns: Mapping[str, Floats],
    order: Ints,
    g: Ints,
    fresh: npt.NDArray[np.bool_],
    seg: Ints,
    starts: Ints,
    fresh_count: Floats,
    n_groups: int,
) -> tuple[Floats, Ints, Floats]:
    """Each event's window before it, its length, and each touched entity's final window.

    A history array holds, per entity of the chunk, its stored window (``size``
    slots) followed by its fresh events; an event's window is the ``size`` slots
    before its own place, always inside its entity's part of the array.
    """
    assert layout.window is not None
    size, n_fields = layout.window.size, len(layout.window.fields)
    n = len(g)
    touched = g[starts]
    fresh_per = np.add.reduceat(fresh.astype(np.int64), starts) if n else np.zeros(0, np.int64)
    base = np.concatenate([[0], np.cumsum(size + fresh_per)[:-1]]).astype(np.int64)
    history = np.zeros((int(base[-1] + size + fresh_per[-1]) if n else 0, n_fields))
    slots = base[:, None] + np.arange(size)
    history[slots.ravel()] = stored["window"][touched].reshape(-1, n_fields)
    values = np.stack([columns[f][order].astype(np.float64) for f in layout.window.fields], axis=1)
    k = fresh_count.astype(np.int64)  # fresh events before each event in its entity
    place = base[seg] + size + k
    history[place[fresh]] = values[fresh]
    gather = (place - size)[:, None] + np.arange(size)
    window = history[gather]
    seen_before = np.minimum(stored["seen"][g], size) + k
    length = np.minimum(seen_before, size).astype(np.int64)
    end = base + size + fresh_per
    final_window = history[(end - size)[:, None] + np.arange(size)]
    del n_groups
    return window, length, final_window
