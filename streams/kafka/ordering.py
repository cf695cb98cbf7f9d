"""Commit bookkeeping: which consumed offsets are finished, and what may be committed.

An offset is *finished* when its score or dead letter (and any state it
wrote) has been acknowledged by the broker. The committable offset of a
partition is the lowest offset not yet finished, so a crash can replay work
but never skip it. Completions may arrive in any order (a dead letter is
acknowledged before an earlier event's score); the watermark only moves over
a contiguous finished prefix.

Pure and synchronous: no Kafka, no asyncio. Partitions are opaque hashable
keys (Faust's ``TP`` in the worker, strings in tests).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Partition:
    pending: deque[int] = field(default_factory=deque)  # registered, in consumption order
    finished: set[int] = field(default_factory=set)  # finished but not yet at the head
    next_offset: int | None = None  # one past the last registered offset


class OffsetTracker:
    """Per partition: offsets in flight, offsets finished, and the commit watermark."""

    def __init__(self) -> None:
        self._partitions: dict[Hashable, _Partition] = {}
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Events consumed and not yet committable, over all partitions.

        An event finished behind an unfinished one still counts: until the
        watermark passes it, its partition cannot be committed past it.
        """
        return self._in_flight

    def partitions(self) -> list[Hashable]:
        return list(self._partitions)

    def next_offset(self, tp: Hashable) -> int | None:
        """One past the last offset registered for ``tp`` (``None``: nothing yet)."""
        part = self._partitions.get(tp)
        return None if part is None else part.next_offset

    def pending(self, tp: Hashable) -> int:
        part = self._partitions.get(tp)
        return len(part.pending) if part else 0

    def register(self, tp: Hashable, offsets: Sequence[int]) -> int:
        """Record offsets as consumed, in order; return how many leading ones are repeats.

        Offsets at or below what this partition already registered are
        redeliveries of work in flight or done (the fetcher re-reading after a
        seek); the caller must skip those first ``n`` offsets. Gaps between
        chunks are normal (compaction, transaction markers).
        """
        part = self._partitions.get(tp)
        if part is None:
            part = self._partitions[tp] = _Partition()
        skip = 0
        if part.next_offset is not None:
            while skip < len(offsets) and offsets[skip] < part.next_offset:
                skip += 1
        fresh = offsets[skip:]
        if fresh:
            previous = fresh[0] - 1
            for offset in fresh:
                if offset <= previous:
                    raise ValueError(f"offsets of {tp!r} must increase: {previous} then {offset}")
                previous = offset
            part.pending.extend(fresh)
            part.next_offset = fresh[-1] + 1
            self._in_flight += len(fresh)
        return skip

    def finish(self, tp: Hashable, offsets: Iterable[int]) -> None:
        """Mark offsets finished (their output is acknowledged by the broker)."""
        part = self._partitions.get(tp)
        if part is None:  # forgotten (revoked) meanwhile: nothing to commit any more
            return
        pending = part.pending
        finished = part.finished
        finished.update(offsets)
        popped = 0
        while pending and pending[0] in finished:
            finished.discard(pending.popleft())
            popped += 1
        if not pending:  # nothing in flight: drop marks of offsets never registered here
            finished.clear()
        self._in_flight -= popped

    def committable(self, tp: Hashable) -> int | None:
        """The offset to commit (the next to read), or ``None`` if nothing was registered."""
        part = self._partitions.get(tp)
        if part is None or part.next_offset is None:
            return None
        return part.pending[0] if part.pending else part.next_offset

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Drop partitions (revoked, or to be re-read from their committed offset)."""
        for tp in tps:
            part = self._partitions.pop(tp, None)
            if part is not None:
                self._in_flight -= len(part.pending)
