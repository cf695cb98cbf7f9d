"""Configuration (c): the Faust app most Faust users would write for this job.

Run as its own process: ``python -m faust -A benchmarks.naive_app worker -l info``.
It does the same work as streamscore, one event at a time: an agent iterates
the events stream, validates each event with :class:`pipelines.fraud.events.Event`,
looks its profile up in a Faust ``Table`` (RocksDB, changelogged) kept by a
second agent, rolls the entity's history in another table, featurizes with
:mod:`pipelines.fraud.features`, calls the model for that one event and awaits
``scores.send()``. Invalid events go to the dead-letter topic with the same
headers streamscore writes, so every input has an output to count.

It reads the same ``STREAMSCORE_*`` variables as the worker (broker, topics,
app id, partitions, data dir, web port, group timeouts, model, torch threads).
The one departure from a stock Faust app is the consumer's fetch wait: Faust
hardcodes 1500 ms, and the embedded broker answers a waiting fetch only when
that wait expires, so a caught-up consumer would add up to 1.5 s per fetch to
every latency. ``STREAMSCORE_FETCH_MAX_WAIT_MS`` sets it here as it does for
the worker (the bench passes 10, what the worker uses on this broker; unset
keeps Faust's 1500).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import faust
import torch
from faust.transport.drivers import aiokafka as faust_aiokafka
from pydantic import ValidationError

from models.registry import resolve
from pipelines.fraud.artifact import load_artifact
from pipelines.fraud.events import Event
from pipelines.fraud.features import featurize, roll
from schemas.deadletter import dead_letter_headers
from schemas.profiles import FeatureUpdate
from schemas.scores import Score, Source
from streams.errors import StreamscoreError
from streams.settings import Settings, load_settings

#: Faust's own fetch wait (``faust/transport/drivers/aiokafka.py``).
FAUST_FETCH_MAX_WAIT_MS = 1500


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except StreamscoreError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from exc


settings = _settings_or_exit()
fetch_max_wait_ms = settings.fetch_max_wait_ms or FAUST_FETCH_MAX_WAIT_MS


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with a configurable fetch wait (see the module docstring)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class NaiveApp(faust.App):
    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


app = NaiveApp(
    settings.app_id,
    broker=settings.faust_broker,
    store="rocksdb://",
    datadir=str(settings.data_dir),
    web_port=settings.web_port,
    topic_partitions=settings.partitions,
    consumer_auto_offset_reset="earliest",
    # The shipped app's group timeouts: Faust's defaults make joins slow on this broker.
    broker_session_timeout=settings.session_timeout_ms / 1000.0,
    broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000.0,
    broker_rebalance_timeout=settings.rebalance_timeout_ms / 1000.0,
    broker_commit_interval=settings.commit_interval_ms / 1000.0,
)


def _raw_topic(name: str) -> Any:
    """Bytes in and out: validation is the agent's job (Faust's JSON codec would crash it)."""
    return app.topic(name, key_type=bytes, value_type=bytes, value_serializer="raw")


events_topic = _raw_topic(settings.events_topic)
features_topic = _raw_topic(settings.features_topic)
scores_topic = _raw_topic(settings.scores_topic)
dlq_topic = _raw_topic(settings.dlq_topic)

# JSON values, Faust's default: a profile dict, and the entity's history record in hex.
profiles = app.Table("profiles", default=None, partitions=settings.partitions)
history = app.Table("history", default=None, partitions=settings.partitions)

torch.set_num_threads(settings.torch_threads or max(1, (os.cpu_count() or 2) - 1))
_auto = "cuda" if torch.cuda.is_available() else "cpu"
model = load_artifact(
    resolve(settings.model, settings.registry_dir),
    _auto if settings.device == "auto" else settings.device,
)


async def _dead_letter(event: Any, exc: Exception) -> None:
    """The record as it came, with the headers streamscore writes (stage ``validate``)."""
    message = event.message
    headers = dead_letter_headers(
        list(message.headers or []),
        stage="validate",
        error_class=type(exc).__name__,
        message=str(exc),
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000),
        app_id=settings.app_id,
    )
    encoded = [(k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in headers]
    await dlq_topic.send(key=event.key, value=event.value, headers=encoded)


@app.agent(events_topic)
async def score(stream: Any) -> None:
    """One event at a time: validate, look up, featurize, predict, send."""
    async for event in stream.events():
        try:
            record = Event.model_validate_json(event.value)
        except ValidationError as exc:
            await _dead_letter(event, exc)
            continue
        message = event.message
        entity = record.entity_id
        stored = history.get(entity)
        rolled = roll(
            [entity], [record.amount], [record.ts], [message.offset],
            {entity: None if stored is None else bytes.fromhex(stored)},
        )  # fmt: skip
        history[entity] = rolled.final[entity].hex()
        raw = featurize(
            [record.amount], [record.ts], [record.channel], [record.country],
            [record.currency], [profiles.get(entity)], rolled,
        )  # fmt: skip
        probability = float(model.predict(raw)[0])
        out = Score(
            event_id=record.event_id,
            entity_id=entity,
            score=min(1.0, max(0.0, probability)),
            model=model.name,
            model_version=model.version,
            degraded=False,
            event_ts=record.ts,
            scored_ts=time.time(),
            source=Source(topic=message.topic, partition=message.partition, offset=message.offset),
            route="primary",
        )
        await scores_topic.send(key=event.key, value=out.model_dump_json().encode())


@app.agent(features_topic)
async def keep_profiles(stream: Any) -> None:
    """Each feature update replaces the entity's profile in the table."""
    async for event in stream.events():
        try:
            update = FeatureUpdate.model_validate_json(event.value)
        except ValidationError as exc:
            await _dead_letter(event, exc)
            continue
        profiles[update.entity_id] = update.features()
