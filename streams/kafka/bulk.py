"""The bulk path: Faust's consumer hands whole fetched chunks to our agents.

Faust keeps what it is good at: the consumer group, partition assignment,
offset commits, tables, recovery and the worker. What it is slow at is
per-event delivery (a Stream iteration, a task switch and an ack per event,
near 5k events/s here), so for the *bulk topics* (events and features) this
consumer overrides the fetch loop and hands each partition's fetched records
to a sink as one :class:`Chunk`. Other topics (table changelogs during
recovery) still go through Faust's per-message path.

Commits stay Faust's: its commit timer asks :meth:`BulkConsumer._new_offset`,
which for bulk partitions answers from :class:`streams.kafka.flow.Flow` (the lowest
offset whose output is not yet acknowledged). Rebalances and shutdown drain
the flow before Faust commits (:meth:`BulkConsumer.wait_empty`).

A partition can be revoked at any moment between the fetch that brought a
record and the use of that record (a rebalance, or a member woken from a long
pause after the group moved on without it). Every operation on a partition
here is safe against that: a chunk carries the intake epoch of the moment its
fetch *began*, and revocation moves the epoch on before Faust closes the
partition's tables, so no stale chunk reaches a table; seeks and commits skip
partitions no longer assigned instead of raising (aiokafka's
``IllegalStateError``, which would stop the fetcher and the worker).

This leans on private methods of faust-streaming 0.15.3 (pinned), all in
this one module: ``_drain_messages``, ``_wait_next_records``, the consumer
thread's ``_fetch_records``,
``_new_offset``, ``_filter_tps_with_pending_acks`` and the per-message
bookkeeping copied from ``Consumer._drain_messages``. The integration tests
(restart, rebalance, recovery) fail if any of these change meaning.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from time import monotonic
from typing import Any, NamedTuple, Protocol, cast

from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import OffsetAndMetadata
from faust.exceptions import ConsumerNotStarted
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.kafka.flow import Flow
from streams.kafka.recovery import recovery_end_offsets
from streams.kafka.undecodable import read_raw

log = logging.getLogger(__name__)


class TransactionHooks(Protocol):
    """What the consumer tells the exactly-once machinery (streams.runtime)."""

    async def on_drained(self, drained: bool) -> None: ...
    async def on_revoked(self, tps: set[TP]) -> None: ...
    async def on_assigned(self, tps: set[TP]) -> None: ...


class Chunk(NamedTuple):
    """One topic's records from one fetch: per partition, in offset order.

    One chunk per fetch (not per partition): decoding, lookups and emission
    then pay their fixed costs once per fetch, which is what keeps a worker
    efficient when records trickle in a few per partition at a time.
    """

    parts: Sequence[tuple[TP, Sequence[Any]]]  # (partition, aiokafka ConsumerRecords)
    epoch: int  # the flow's intake epoch when fetched
    fetched_at: float = 0.0  # wall clock when the fetch was handed over (processing latency)


Sink = Callable[[Chunk], Awaitable[None]]


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, with the fetch wait we choose (Faust fixes it at 1.5 s)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        owner = self.consumer
        assert isinstance(owner, BulkConsumer)
        consumer._fetch_max_wait_ms = owner.fetch_max_wait_ms
        if owner.exactly_once is not None:  # never read another producer's aborted writes
            consumer._isolation_level = "read_committed"
        return consumer

    async def _commit(self, offsets: Any) -> bool:
        """Faust's commit, but a partition revoked meanwhile is skipped, not a crash.

        Faust stops the worker on ``IllegalStateError``; the offsets of a partition
        this member no longer owns are the new owner's to commit.
        """
        consumer = self._ensure_consumer()
        assigned = self.assignment()
        owned = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        try:
            await consumer.commit(
                {
                    faust_aiokafka.ensure_aiokafka_TP(tp): OffsetAndMetadata(offset, "")
                    for tp, offset in owned.items()
                }
            )
        except IllegalStateError as exc:
            log.warning("commit skipped: a partition was revoked meanwhile (%s)", exc)
            return False
        except CommitFailedError as exc:
            if "already rebalanced" in str(exc):
                return False
            raise
        now = monotonic()
        self.tp_last_committed_at.update(dict.fromkeys(owned, now))
        return True


class BulkConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with a bulk fetch loop for some topics."""

    _flow: Flow | None = None
    _sinks: dict[str, Sink]
    drain_timeout: float = 30.0
    fetch_max_wait_ms: int = 500
    #: Client config to measure changelog ends with (kafka.recovery); None trusts the broker.
    measure_ends_with: dict[str, Any] | None = None
    #: confluent-kafka settings for reading a record aiokafka cannot decode.
    client_config: dict[str, Any] | None = None
    #: Exactly-once: offsets of bulk partitions are committed in transactions, not by Faust.
    exactly_once: TransactionHooks | None = None

    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def attach(self, flow: Flow, sinks: dict[str, Sink]) -> None:
        """Deliver the ``sinks``' topics in bulk; pause all fetching under backpressure."""
        self._flow = flow
        self._sinks = dict(sinks)

    def paused_for_backpressure(self) -> set[TP]:
        """The partitions that backpressure keeps from being fetched right now."""
        flow = self._flow
        if flow is None or not flow.paused:
            return set()
        return set(self._get_active_partitions())

    def lag(self) -> dict[TP, int]:
        """Per owned bulk partition: the end offset last seen minus the commit watermark."""
        flow = self._flow
        if flow is None:
            return {}
        try:
            assigned = self.assignment()
        except ConsumerNotStarted:
            return {}
        lags = {}
        for tp in assigned:
            if tp.topic not in self._sinks:
                continue
            try:
                end = self.highwater(tp)
            except IllegalStateError:  # revoked since the assignment was read
                continue
            done = flow.committable(tp)
            if done is None:
                done = self._committed_offset.get(tp)
            if end is not None and done is not None:
                lags[tp] = max(0, end - done)
        return lags

    # -- fetching --------------------------------------------------------------------------
    #: The flow's intake epoch when the last fetch began: its records carry it.
    _fetch_epoch: int = 0

    async def _wait_next_records(self, timeout: float) -> tuple[Any, set[TP] | None]:
        """Faust's version, but leaves backpressured partitions out of the fetch."""
        if not self.flow_active:
            await self.wait(self.can_resume_flow)  # type: ignore[arg-type]  # as in Faust
        try:
            self.not_waiting_next_records.set()
            flow = self._flow
            if flow is not None and flow.paused:
                # Backpressure: fetch nothing until there is room again. (A fetch of the
                # other partitions would block for its whole timeout when they are quiet,
                # and a fetch cannot be cancelled without losing what it returns.)
                await flow.wait_resumed(timeout)
                return {}, set()
            active: set[TP] = self._get_active_partitions()
            if active:
                # Stamped before the fetch: a revocation while it is out makes it stale.
                self._fetch_epoch = flow.intake_epoch if flow is not None else 0
                return await self._fetch(active, timeout), active
            await self.sleep(1)
            return {}, active
        finally:
            self.not_waiting_next_records.set()

    async def _fetch(self, active: set[TP], timeout: float) -> Any:
        """Faust's fetch, but never more records than there is room for in flight."""
        thread = self._thread
        limit = thread._ensure_consumer()._max_poll_records
        flow = self._flow
        if flow is not None:
            limit = max(1, min(limit, flow.max_in_flight - flow.in_flight))
        try:
            return await self._fetch_records(active, timeout, limit)
        except UnicodeDecodeError as exc:
            return await self._fetch_around_undecodable(active, limit, exc)

    async def _fetch_records(self, active: set[TP], timeout: float, limit: int) -> Any:
        thread = self._thread
        return await thread.call_thread(
            thread._fetch_records,
            thread._ensure_consumer(),
            active,
            timeout=timeout,
            max_records=limit,
        )

    async def _fetch_around_undecodable(
        self, active: set[TP], limit: int, exc: UnicodeDecodeError
    ) -> dict[TP, list[Any]]:
        """A record aiokafka cannot decode: find it, one record at a time, and pass it on.

        The failed fetch may have moved positions past records it never returned,
        so the bulk partitions go back to where this worker's reading stands first.
        """
        log.warning("a fetched record cannot be decoded (%s): looking for it", exc)
        thread = self._thread
        consumer = thread._ensure_consumer()
        bulk = [tp for tp in active if tp.topic in self._sinks]
        revoked: set[TP] = set()
        for tp in bulk:
            position = self._flow.tracker.next_offset(tp) if self._flow is not None else None
            try:
                if position is None:
                    committed = await thread.call_thread(consumer.committed, tp)
                    position = committed if committed is not None else 0
                thread.seek(tp, position)
            except IllegalStateError:  # revoked meanwhile: the new owner reads it
                revoked.add(tp)
        fetched: dict[TP, list[Any]] = {}
        for tp in active - revoked:
            got: list[Any] = []
            while len(got) < limit:
                try:
                    batch = await self._fetch_records({tp}, 0.5, 1)
                except UnicodeDecodeError as error:
                    try:
                        offset = await thread.position(tp)
                    except IllegalStateError:
                        offset = None
                    if offset is None:  # no position (revoked meanwhile): nothing to find
                        break
                    reason = f"the client cannot decode it: {error}"
                    config = self.client_config or {"bootstrap.servers": self.transport.url}
                    raw = await asyncio.get_running_loop().run_in_executor(
                        None, read_raw, config, tp.topic, tp.partition, offset, reason
                    )
                    log.error("%s[%d]@%d cannot be decoded: dead-lettered", *tp, offset)
                    got.append(raw)
                    thread.seek(tp, offset + 1)
                    continue
                if not batch:
                    break
                got.extend(batch.get(tp, ()))
            if got:
                fetched[tp] = got
        return fetched

    async def _drain_messages(self, fetcher: Any) -> None:
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(timeout=1.0)
                await self.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    # As Faust does: fetched while a rebalance stopped the flow, so re-read
                    # from the committed offsets once it resumes.
                    await self.perform_seek()
                    continue
                await self._dispatch(records, active, self._fetch_epoch)
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    async def _dispatch(
        self, records: dict[TP, list[Any]], active: set[TP] | None, epoch: int
    ) -> None:
        generation = self.app.consumer_generation_id
        flow = self._flow
        inbound = self.app.monitor.stream_inbound_time
        chunks: dict[str, list[tuple[TP, Sequence[Any]]]] = {}
        now, fetched_at = monotonic(), time.time()
        for tp, batch in records.items():
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                continue
            if flow is not None and tp.topic in self._sinks:
                inbound[tp] = now  # keeps Faust's livelock detector informed
                chunks.setdefault(tp.topic, []).append((tp, batch))
                continue
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return  # a rebalance began: the rest is re-read from the committed offsets
            await self._deliver_per_message(tp, batch)
        for topic, parts in chunks.items():
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return
            sink = self._sinks[topic]
            await self.wait_first(sink(Chunk(parts, epoch, fetched_at)), self.suspend_flow.wait())

    async def _deliver_per_message(self, tp: TP, batch: list[Any]) -> None:
        """Faust's own per-message delivery (read offsets, gaps, callback)."""
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled = self.app.topics.acks_enabled_for(tp.topic)
        callback = self.callback
        for index, record in enumerate(batch):
            if index and not index % 100:
                await asyncio.sleep(0)
            message = self._to_message(tp, record)
            offset = message.offset
            r_offset = get_read_offset(tp)
            if r_offset is None or offset >= r_offset:
                gap = offset - (r_offset or 0)
                if gap > 1 and r_offset and acks_enabled:
                    await self._add_gap(tp, r_offset + 1, offset)
                await self.wait_first(callback(message), self.suspend_flow.wait())
                set_read_offset(tp, offset)

    async def highwaters(self, *partitions: TP) -> Any:
        """End offsets for table recovery, measured where the reported ones mislead."""
        reported = await super().highwaters(*partitions)
        config = self.measure_ends_with
        if config is None or not reported:
            return reported
        by_key = {(tp.topic, tp.partition): offset for tp, offset in reported.items()}
        measure = functools.partial(
            recovery_end_offsets, config, by_key, read_committed=self.exactly_once is not None
        )
        corrected = await asyncio.get_running_loop().run_in_executor(None, measure)
        return {tp: corrected[(tp.topic, tp.partition)] for tp in reported}

    # -- commits ---------------------------------------------------------------------------
    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        seen = set()
        for tp in super()._filter_tps_with_pending_acks(topics):
            seen.add(tp)
            yield tp
        flow = self._flow
        if flow is None:
            return
        for tracked in flow.tracker.partitions():
            tp = cast(TP, tracked)
            if tp not in seen and (topics is None or tp in topics or tp.topic in topics):
                yield tp

    def _new_offset(self, tp: TP) -> int | None:
        flow = self._flow
        if flow is not None and tp.topic in self._sinks:
            if self.exactly_once is not None:
                return None  # committed inside the partition's transaction instead
            return flow.committable(tp)
        result: int | None = super()._new_offset(tp)
        return result

    async def perform_seek(self) -> None:
        """Faust's seek back to the committed offsets, safe against a revocation meanwhile.

        aiokafka seeks partition by partition, awaiting each committed offset; a
        rebalance in between leaves it seeking a partition it no longer has
        (``IllegalStateError``). The new assignment starts from the committed offsets
        anyway; the seek is tried again on it so that kept partitions are re-read too.
        """
        for _ in range(3):
            try:
                await super().perform_seek()
                return
            except IllegalStateError as exc:
                log.warning("the assignment changed during a seek (%s): seeking again", exc)
        log.warning("the assignment kept changing during seeks: leaving it to the next one")

    # -- rebalance and shutdown ------------------------------------------------------------
    async def wait_empty(self) -> None:
        """Finish (or abandon) in-flight bulk work, then let Faust commit and finish its own."""
        if self._flow is not None:
            drained = await self._flow.drain(self.drain_timeout)
            if self.exactly_once is not None:
                await self.exactly_once.on_drained(drained)
        await super().wait_empty()

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        if self._flow is not None:
            # Before Faust closes the partitions' tables: nothing fetched until now may be
            # admitted any more (Faust drains only when it still sees an assignment).
            self._flow.stop_intake()
        await super().on_partitions_revoked(revoked)  # Faust drains (wait_empty) and commits
        if self._flow is not None:
            self._flow.forget(tp for tp in revoked if tp.topic in self._sinks)
        if self.exactly_once is not None:
            await self.exactly_once.on_revoked({tp for tp in revoked if tp.topic in self._sinks})

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        if self._flow is not None:
            # Every assigned partition is re-read from its committed offset (a new
            # assignment resets fetch positions), so start the bookkeeping afresh.
            self._flow.abandon()
        if self.exactly_once is not None:  # fence the previous owners before reading anything
            await self.exactly_once.on_assigned({tp for tp in assigned if tp.topic in self._sinks})
        await super().on_partitions_assigned(assigned, generation_id)


class BulkTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport, creating a :class:`BulkConsumer`."""

    Consumer = BulkConsumer
