"""The Faust app: topics, tables, the two agents and the HTTP pages.

Run with ``streamscore worker`` (or ``faust -A streams.app worker``).
Configuration comes only from ``STREAMSCORE_*`` variables; an invalid value
stops the process with exit code 2 before anything starts.

The events and features topics do not reach the agents one event at a time:
:class:`streams.kafka.bulk.BulkConsumer` hands each fetched partition chunk to a
channel, and each agent's stream carries those chunks.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import faust

from streams.errors import StreamscoreError
from streams.kafka.bulk import BulkConsumer, BulkTransport, Chunk, Sink
from streams.kafka.topics import TABLES
from streams.runtime import Runtime
from streams.settings import Settings, faust_credentials, load_settings
from streams.web import register_pages

log = logging.getLogger(__name__)

#: Chunks waiting for an agent; small, because the consumer fetches ahead anyway.
CHANNEL_DEPTH = 4

_background: set[asyncio.Future[None]] = set()  # keeps fire-and-forget tasks referenced


class Worker(faust.Worker):
    """Faust's worker without the terminal spinner.

    At log levels of WARN and above Faust attaches a spinner handler and sets
    the root logger to DEBUG, so every library's debug record is built and
    formatted: a measurable cost per fetched batch. Logs are for humans and
    collectors here, not a spinner.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None


class StreamscoreApp(faust.App):
    """A Faust app whose consumer delivers the bulk topics in chunks."""

    runtime: Runtime

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime = Runtime(settings)
        super().__init__(
            settings.app_id,
            broker=settings.faust_broker,
            store="rocksdb://",
            datadir=str(settings.data_dir),
            web_enabled=True,
            web_port=settings.web_port,
            web_bind="0.0.0.0",
            web_in_thread=False,
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            table_standby_replicas=1,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=settings.session_timeout_ms / 1000.0,
            broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000.0,
            broker_rebalance_timeout=settings.rebalance_timeout_ms / 1000.0,
            broker_commit_interval=settings.commit_interval_ms / 1000.0,
            broker_max_poll_records=max(settings.max_batch_size, 2048),
            producer_acks=-1,
            stream_wait_empty=True,
            Worker=Worker,
            broker_credentials=faust_credentials(settings),
        )

    def _new_transport(self) -> Any:
        return BulkTransport(self.conf.broker_consumer, self)

    async def on_start(self) -> None:
        await super().on_start()
        consumer = self.consumer
        assert isinstance(consumer, BulkConsumer)
        try:
            await self.runtime.start(
                consumer=consumer,
                profiles_table=profiles,
                history_table=history,
                event_sink=_sink(event_chunks),
                feature_sink=_sink(feature_chunks),
                on_error=self._fatal,
            )
        except StreamscoreError as exc:
            log.error("cannot start: %s", exc)
            raise

    def _fatal(self, exc: BaseException) -> None:
        """A systemic failure (not bad input): stop rather than run on without committing."""
        log.error("stopping the worker: %s", exc)
        task = asyncio.ensure_future(self.crash(exc))
        _background.add(task)
        task.add_done_callback(_background.discard)

    def tables_ready(self) -> bool:
        return bool(self.tables.actives_ready) and not self.rebalancing


def _sink(channel: Any) -> Sink:
    """Feed a channel; refuse to drop a chunk if no agent listens (that would lose it)."""

    async def put(chunk: Chunk) -> None:
        for _ in range(300):
            if channel.subscriber_count:
                await channel.put(chunk)
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"no agent is consuming chunks of {chunk.parts[0][0].topic!r}")

    return put


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except StreamscoreError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from exc


settings = _settings_or_exit()
app = StreamscoreApp(settings)

events_topic = app.topic(
    settings.events_topic, partitions=settings.partitions, key_type=bytes, value_type=bytes
)
features_topic = app.topic(
    settings.features_topic, partitions=settings.partitions, key_type=bytes, value_type=bytes
)
# Subscribe the consumer to both topics; their records go to the agents in chunks.
app.topics.add(events_topic)
app.topics.add(features_topic)


def _table(name: str) -> Any:
    return app.Table(
        name,
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        help=f"{name} of each entity, co-partitioned with {settings.events_topic}",
    )


profiles, history = (_table(name) for name in TABLES)

event_chunks = app.channel(maxsize=CHANNEL_DEPTH)
feature_chunks = app.channel(maxsize=CHANNEL_DEPTH)


@app.agent(event_chunks, name="score-events")
async def score_events(chunks: faust.StreamT[Chunk]) -> None:
    """Score every event: decode, look up features, batch onto the model, emit in order."""
    async for chunk in chunks:
        try:
            await app.runtime.scoring.process(chunk)  # type: ignore[union-attr]
        except Exception as exc:  # a bug or a systemic failure: never carry on silently
            log.exception("scoring agent failed")
            app._fatal(exc)
            raise


@app.agent(feature_chunks, name="update-features")
async def update_features(chunks: faust.StreamT[Chunk]) -> None:
    """Keep the profiles table current from the features topic."""
    async for chunk in chunks:
        try:
            await app.runtime.features.process(chunk)  # type: ignore[union-attr]
        except Exception as exc:
            log.exception("features agent failed")
            app._fatal(exc)
            raise


@app.on_before_shutdown.connect
async def _close_runtime(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    """After the consumer drained and committed: stop the batcher, flush, free the model."""
    await app.runtime.close()


register_pages(app)
