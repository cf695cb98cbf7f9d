"""Exactly-once outputs: Kafka transactions, one per owned source partition.

With ``STREAMSCORE_PROCESSING_GUARANTEE=exactly_once`` every output of a
source partition (its scores, dead letters and state changes) is produced
by that partition's transactional producer, and its consumed offset is
committed *inside* the same transaction. A reader with
``isolation.level=read_committed`` then sees each event's output exactly
once, crash or not.

The transactional id is derived from the source partition, so when a
partition moves (rebalance, crash, restart) the new owner's producer fences
the old one and the coordinator aborts whatever it left open: a zombie can
neither commit late nor duplicate.

A transaction must hold exactly the outputs of the offsets it commits, so
transactions are committed only when nothing is in flight: the runtime stops
intake, lets the pipeline drain, commits every partition's transaction with
its watermark and resumes (every ``STREAMSCORE_COMMIT_INTERVAL_MS``, and at
every rebalance and shutdown). Any send error aborts the worker: it restarts
from the committed offsets, which is always exact.

confluent-kafka provides the producers. Faust's consumer is aiokafka, so the
group metadata sent with the offsets is the group id alone (generation -1,
the pre-KIP-447 protocol): zombie fencing rests on the transactional ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from faust.types import TP

from streams.errors import EmitError
from streams.kafka.emit import Delivered, Messages, Outgoing, _Attempt
from streams.kafka.flow import Flow
from streams.threads import DaemonThread

log = logging.getLogger(__name__)


class TransactionalEmitter:
    """The :class:`streams.kafka.emit.Emitter` interface, transactionally, per source partition."""

    def __init__(
        self,
        client_config: Mapping[str, Any],
        *,
        app_id: str,
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._config = dict(client_config)
        self._app_id = app_id
        self._on_error = on_error
        self._producers: dict[TP, Any] = {}  # confluent_kafka.Producer per source partition
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._thread: threading.Thread | None = None
        self._calls = DaemonThread("streamscore-txn-calls")  # blocking transaction calls
        # The offsets go to the group's coordinator with the group id alone (generation -1):
        # fencing comes from the per-partition transactional ids.
        metadata_client = Consumer({**self._config, "group.id": app_id})
        self._group_metadata = metadata_client.consumer_group_metadata()
        metadata_client.close()
        # Sends that arrive while the transactions are being committed wait here, in order:
        # a producer between commit and begin is not in a transaction.
        self._committing = False
        self._deferred: list[tuple[list[Outgoing], Callable[[Delivered], None], bool, Any]] = []
        self.broken: BaseException | None = None
        self.stalled: str | None = None  # the Emitter interface; errors stop the worker instead
        self.on_stall: Callable[[str | None], None] = lambda reason: None
        self.on_retry: Callable[[int], None] = lambda count: None
        self.retrying = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._running = True
        self._thread = threading.Thread(target=self._poll, name="streamscore-txn", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while self._running:
            producers = list(self._producers.values())
            for producer in producers:
                producer.poll(0)
            time.sleep(0.002 if producers else 0.05)

    def partitions(self) -> list[TP]:
        return list(self._producers)

    def transactional_id(self, tp: TP) -> str:
        return f"{self._app_id}-{tp.topic}-{tp.partition}"

    async def _blocking(self, call: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking librdkafka call on the daemon thread; never abandon it half-way.

        The call is shielded: a cancelled caller still waits for it, since a transaction
        call abandoned in flight would collide with the next one. After a failure (fenced,
        fatal) no further transaction call is made: the worker is stopping, and calls on a
        failed producer only wait out their timeouts.
        """
        if self.broken is not None:
            raise EmitError(f"the transactional producers failed earlier: {self.broken}")
        future = self._calls.submit(lambda: call(*args))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            raise
        except Exception as exc:
            self.broken = exc
            raise

    async def assign(self, tps: Iterable[TP]) -> None:
        """Open transactions for newly owned partitions: this fences their previous owners."""
        for tp in tps:
            if tp in self._producers:
                continue
            producer = Producer(
                {**self._config, "transactional.id": self.transactional_id(tp), "linger.ms": 1}
            )
            await self._blocking(producer.init_transactions, 30)
            await self._blocking(producer.begin_transaction)
            self._producers[tp] = producer

    async def release(self, tps: Iterable[TP]) -> None:
        """Give up partitions (after their transaction was committed or aborted)."""
        for tp in tps:
            producer = self._producers.pop(tp, None)
            if producer is not None:
                await self._blocking(producer.abort_transaction, 30)  # the empty one just begun

    def send(
        self,
        messages: Messages,
        on_delivered: Callable[[Delivered], None],
        *,
        track_offsets: bool = False,
        source: Any = None,
    ) -> None:
        """Send in the transaction of ``source``: a partition, or one per message."""
        if self._committing:
            self._deferred.append((list(messages), on_delivered, track_offsets, source))
            return
        if self._loop is None:
            raise EmitError("the transactional emitter is not started")
        if not isinstance(source, list):
            source = [source] * len(messages)
        groups: dict[Any, list[Outgoing]] = {}
        for message, tp in zip(messages, source, strict=True):
            groups.setdefault(tp, []).append(message)
        report = Delivered()
        remaining = [len(groups)]
        if not groups:
            report.acked_at = time.time()
            self._loop.call_soon(on_delivered, report)
            return

        def done(attempt: _Attempt) -> None:
            if attempt.failed:  # inside a transaction nothing can be retried safely
                self._on_error(EmitError(f"a transactional send failed: {attempt.failed[0][1]}"))
                return
            for key, offset in attempt.offsets.items():
                report.offsets[key] = max(offset, report.offsets.get(key, -1))
            remaining[0] -= 1
            if not remaining[0]:
                report.acked_at = time.time()
                on_delivered(report)

        for tp, group in groups.items():
            producer = self._producers.get(tp)
            if producer is None:
                raise EmitError(f"no transaction is open for {tp!r}")
            attempt = _Attempt(len(group), done, self._loop, track_offsets, producer)
            try:
                for m in group:
                    producer.produce(
                        m.topic, value=m.value, key=m.key, headers=m.headers,
                        partition=-1 if m.partition is None else m.partition,
                        on_delivery=attempt.ack,
                    )  # fmt: skip
            except KafkaException as exc:  # e.g. fenced: this worker must stop, not go on
                self.broken = exc
                self._on_error(EmitError(f"cannot produce in the transaction: {exc}"))
                return

    async def commit(self, offsets: Mapping[TP, int]) -> None:
        """Commit every open transaction with its partition's offset, then open the next.

        Outputs sent meanwhile (work admitted after the offsets were taken) belong to
        the next transactions: they are held and sent once those are open.
        """
        self._committing = True
        try:
            for tp, producer in list(self._producers.items()):
                offset = offsets.get(tp)
                if offset is not None:
                    position = [TopicPartition(tp.topic, tp.partition, offset)]
                    await self._blocking(
                        producer.send_offsets_to_transaction, position, self._group_metadata, 30
                    )
                await self._blocking(producer.commit_transaction, 30)
                await self._blocking(producer.begin_transaction)
        finally:
            self._committing = False
            deferred, self._deferred = self._deferred, []
            for messages, callback, track, source in deferred:
                self.send(messages, callback, track_offsets=track, source=source)

    async def abort(self) -> None:
        """Throw away what the open transactions hold (their work is re-read)."""
        for producer in list(self._producers.values()):
            await self._blocking(producer.abort_transaction, 30)
            await self._blocking(producer.begin_transaction)

    async def close(self, timeout: float = 30.0) -> int:
        """Drop the producers; the last transaction was committed by the final drain."""
        try:
            await self.release(list(self._producers))
        except (KafkaException, EmitError) as exc:  # e.g. fenced: nothing left to keep
            log.warning("closing the transactional producers: %s", exc)
            self._producers.clear()
        self._running = False
        self._calls.close()
        return 0


class ExactlyOnce:
    """Commits the transactions when nothing is in flight, and follows partitions around."""

    def __init__(
        self,
        emitter: TransactionalEmitter,
        flow: Flow,
        *,
        group_id: str,
        interval: float,
        drain_timeout: float,
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.emitter = emitter
        self._on_error = on_error
        self.flow = flow
        self.group_id = group_id
        self.interval = interval
        self.drain_timeout = drain_timeout
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self.commits = 0

    async def run(self) -> None:
        """Commit every ``interval`` seconds for as long as the worker runs."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            if self._stopping.is_set():
                return
            try:
                await self.commit()
            except Exception as exc:  # e.g. fenced by a newer owner: stop, never commit late
                log.error("cannot commit the transactions: %s", exc)
                self._on_error(exc)
                return

    async def commit(self) -> bool:
        """Hold intake, let in-flight work finish, commit every partition's transaction."""
        async with self._lock:
            self.flow.hold("transaction", "committing a transaction")
            try:
                if not await self.flow.quiesce(self.drain_timeout):
                    log.warning("in-flight events did not finish in time; commit postponed")
                    return False
                await self._commit_quiet()
                return True
            finally:
                self.flow.hold("transaction", None)

    async def stop(self) -> None:
        """Let a commit in progress finish; then no more."""
        self._stopping.set()
        async with self._lock:
            pass

    async def _commit_quiet(self) -> None:
        flow = self.flow
        offsets = {
            tp: offset
            for tp in self.emitter.partitions()
            if (offset := flow.committable(tp)) is not None
        }
        await self.emitter.commit(offsets)
        self.commits += 1

    # -- the consumer's rebalance hooks (streams.kafka.bulk.TransactionHooks) --------------------
    async def on_drained(self, drained: bool) -> None:
        if self.emitter.broken is not None:  # stopping after a failure: nothing to finish
            return
        async with self._lock:
            try:
                if drained:
                    await self._commit_quiet()
                else:  # some work was abandoned: its outputs must not be committed
                    await self.emitter.abort()
            except Exception as exc:
                log.error("cannot finish the transactions: %s", exc)
                self._on_error(exc)

    async def on_revoked(self, tps: set[TP]) -> None:
        if self.emitter.broken is not None:
            return
        async with self._lock:
            await self.emitter.release(tps)

    async def on_assigned(self, tps: set[TP]) -> None:
        async with self._lock:
            await self.emitter.assign(tps)
