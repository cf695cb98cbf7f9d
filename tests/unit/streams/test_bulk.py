"""The bulk consumer against partitions revoked between a fetch and its use.

A member frozen past its session timeout (a long GC pause, a VM migration)
wakes into a group that moved on: its fetcher may seek, and its commit timer
commit, partitions it no longer has. aiokafka raises ``IllegalStateError`` for
those; Faust's fetcher and commit let it stop the worker. These tests drive
the consumer's own seek and commit with a client that revokes in between.
"""

from __future__ import annotations

from typing import Any

from aiokafka.errors import IllegalStateError
from faust.types import TP

from streams.kafka.bulk import BulkConsumer, _ConsumerThread
from streams.kafka.flow import Flow
from streams.metrics import Metrics

TP0, TP1 = TP("events", 0), TP("events", 1)


class RevokingThread:
    """A consumer thread whose first seek meets a partition revoked during it."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def seek_to_committed(self) -> dict[TP, int]:
        self.calls += 1
        if self.calls <= self.failures:
            raise IllegalStateError(f"No current assignment for partition {TP1}")
        return {TP0: 42}


def consumer(thread: RevokingThread) -> BulkConsumer:
    made = BulkConsumer.__new__(BulkConsumer)
    made._thread = thread
    made._read_offset = {}
    made._committed_offset = {}
    return made


async def test_a_seek_that_meets_a_revoked_partition_is_tried_again_not_raised() -> None:
    thread = RevokingThread(failures=1)
    bulk = consumer(thread)
    await bulk.perform_seek()  # raised IllegalStateError out of the fetcher before
    assert thread.calls == 2  # once more, on the assignment as it is now
    assert bulk._read_offset == {TP0: 42}
    assert bulk._committed_offset == {TP0: 42}


async def test_seeks_give_up_quietly_when_the_assignment_keeps_changing() -> None:
    thread = RevokingThread(failures=10)
    await consumer(thread).perform_seek()
    assert thread.calls == 3


class RevokingClient:
    """An aiokafka consumer whose assignment loses a partition while a commit is on its way."""

    def __init__(self) -> None:
        self.committed: list[Any] = []

    def assignment(self) -> set[Any]:
        return {TP0, TP1}

    async def commit(self, offsets: Any) -> None:
        raise IllegalStateError(f"Partition {TP1} is not assigned")


def test_a_commit_that_meets_a_revoked_partition_is_skipped_not_a_crash() -> None:
    import asyncio

    thread = _ConsumerThread.__new__(_ConsumerThread)
    client = RevokingClient()
    thread._consumer = client
    thread.tp_last_committed_at = {}
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    thread.crash = crash  # type: ignore[method-assign]
    committed = asyncio.run(thread._commit({TP0: 10, TP1: 20}))
    assert committed is False  # Faust's own commit crashed the worker here
    assert crashed == []
    assert thread.tp_last_committed_at == {}


def test_a_chunk_fetched_before_a_revocation_never_reaches_the_tables() -> None:
    flow = Flow(100, Metrics.create())
    fetched_at = flow.intake_epoch  # the epoch a fetch is stamped with when it begins

    class Rec:
        def __init__(self, offset: int) -> None:
            self.offset = offset

    flow.stop_intake()  # the revocation, while the fetch was out
    assert flow.admit_chunk([(TP0, [Rec(0), Rec(1)])], fetched_at) == []
    assert flow.in_flight == 0
    fresh = [Rec(0)]
    assert flow.admit_chunk([(TP0, fresh)], flow.intake_epoch) == fresh
