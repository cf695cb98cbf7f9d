"""``streamscore demo``: broker + worker + traffic, then a summary.

Starts the embedded broker and a real worker process of the pipeline, publishes
its events at the requested rate with a few malformed records mixed in, reads
every score and dead letter back, and checks the outcome: every valid event
scored, every malformed one dead-lettered, per-key order kept. Exit 0 only if
so. A pipeline replays a file of its events, or its declared synthetic
``traffic`` (``fraud``: profiles, then events), or its ``sample``
(``purchases``: the real CDNOW log), with the events' own times scaled to the
replay rate.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import orjson
from confluent_kafka import Producer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.cli.common import fail, served_pipeline_or_exit, settings_or_exit
from streams.errors import StreamscoreError
from streams.harness import (
    Output,
    OutputReader,
    WorkerProcess,
    histogram_buckets,
    histogram_quantiles,
    metric_value,
)
from streams.kafka.embedded import EmbeddedBroker
from streams.pipeline import Pipeline
from streams.pipeline.events import Invalid
from streams.settings import Settings

MALFORMED_SHARE = 0.005
DAY = 86_400.0


@dataclass
class Plan:
    """What the demo publishes: (event id or None for a malformed record, key, value,
    seconds after the start), and the line that says where it came from."""

    records: list[tuple[str | None, bytes | None, bytes]]
    at: list[float]
    ids: set[str]
    source: str

    @property
    def n_bad(self) -> int:
        return len(self.records) - len(self.ids)


@click.command()
@click.option(
    "--pipeline", "pipeline_ref", default=None, metavar="P",
    help="A packaged pipeline or MODULE:ATTRIBUTE (default: STREAMSCORE_PIPELINE).",
)  # fmt: skip
@click.option(
    "--input", "input_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
    help="JSON lines of the pipeline's events to replay (default: its synthetic traffic, "
    "or its sample).",
)  # fmt: skip
@click.option(
    "--events", "n_events", default=None, type=int,
    help="Events to publish [synthetic traffic: 20,000; a file or a sample: all it has].",
)  # fmt: skip
@click.option("--rate", default=4_000.0, show_default=True, help="Events per second (0: unpaced).")
@click.option(
    "--entities", default=1_000, show_default=True, help="Synthetic traffic: distinct entities."
)
@click.option("--seed", default=11, show_default=True, help="Seed of the traffic.")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for scores.")
def demo(
    pipeline_ref: str | None,
    input_path: Path | None,
    n_events: int | None,
    rate: float,
    entities: int,
    seed: int,
    timeout: float,
) -> None:
    """Score a pipeline's traffic end to end on an embedded broker and print a summary."""
    if (n_events is not None and n_events < 1) or rate < 0 or entities < 1:
        fail("--events and --entities must be positive, --rate not negative", 2)
    overrides = {"pipeline": pipeline_ref} if pipeline_ref else {}
    configured = settings_or_exit(**overrides)
    served_pipeline_or_exit(configured)  # a bad value stops here, before anything starts
    declared = _declared(configured)
    synthetic = input_path is None and declared.traffic is not None
    if not synthetic:
        plan = _replay_plan(declared, input_path, n_events, rate, seed)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="streamscore-demo-") as tmp:
        workdir = Path(tmp)
        broker = EmbeddedBroker(log_path=workdir / "broker.log")
        worker: WorkerProcess | None = None
        try:
            bootstrap = broker.start()
            settings = settings_or_exit(broker=f"kafka://{bootstrap}", **overrides)
            env = {
                "STREAMSCORE_BROKER": f"kafka://{bootstrap}",
                "STREAMSCORE_DATA_DIR": str(workdir / "data"),
                "STREAMSCORE_LOG_LEVEL": "warning",
                "STREAMSCORE_PIPELINE": settings.pipeline,
            }
            console.print(f"broker at [bold]{bootstrap}[/]; starting a worker…")
            started = time.monotonic()
            worker = WorkerProcess(env, workdir / "worker.log").start()
            worker.wait_ready()
            console.print(f"worker ready in {time.monotonic() - started:.1f}s ({worker.url})")
            if synthetic:
                plan = _synthetic_plan(declared, settings, n_events or 20_000, rate, entities, seed)
            ok = _run(console, settings, worker, plan, rate, timeout)
        except StreamscoreError as exc:
            if worker is not None and worker.log_path.exists():
                console.print(worker.log_path.read_text()[-4000:])
            fail(str(exc))
        finally:
            if worker is not None:
                worker.terminate()
            broker.stop()
    if not ok:
        raise SystemExit(1)


def _declared(settings: Settings) -> Pipeline:
    from streams.runtime import served_pipeline

    return served_pipeline(settings)


def _producer(settings: Settings) -> Producer:
    """A producer partitioning as Kafka's Java clients do (profiles and events co-partitioned)."""
    return Producer(
        {"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 2,
         "partitioner": "murmur2_random"}
    )  # fmt: skip


def _synthetic_plan(
    pipeline: Pipeline, settings: Settings, n_events: int, rate: float, entities: int, seed: int
) -> Plan:
    """The pipeline's synthetic traffic: profiles published now, events (with malformed
    ones mixed in evenly) planned at ``rate``."""
    assert pipeline.traffic is not None
    try:
        world = pipeline.traffic(entities, seed)
        events = list(world.events(n_events))
        bad = list(world.malformed(max(1, int(n_events * MALFORMED_SHARE)), seed))
        profiles = list(world.profiles())
    except Exception as exc:  # the pipeline's own code: say which part failed, and why
        fail(f"pipeline {pipeline.name!r}: its traffic failed: {type(exc).__name__}: {exc}")
    producer = _producer(settings)
    for key, value in profiles:
        producer.produce(settings.features_topic, key=key, value=value)
    producer.flush()
    field = pipeline.schema.event_id
    records: list[tuple[str | None, bytes | None, bytes]] = []
    every = max(1, len(events) // len(bad))
    bad_iter = iter(bad)
    for index, (key, value) in enumerate(events):
        records.append((str(orjson.loads(value)[field]), key, value))
        if index % every == every - 1:
            malformed = next(bad_iter, None)
            if malformed is not None:
                records.append((None, key, malformed))
    at = [index / rate if rate else 0.0 for index in range(len(records))]
    ids = {event_id for event_id, _, _ in records if event_id is not None}
    return Plan(records, at, ids, f"synthetic traffic of {entities:,} entities (seed {seed})")


def _replay_plan(
    pipeline: Pipeline, path: Path | None, n_events: int | None, rate: float, seed: int
) -> Plan:
    """A declared pipeline's events from ``path`` (or its sample), each validated, with
    malformed records of four kinds mixed in; their own times set the pace, scaled so
    that the whole replay runs at ``rate`` events a second on average."""
    if path is not None:
        try:
            values = [line for line in path.read_bytes().splitlines() if line.strip()]
        except OSError as exc:
            fail(f"--input {path}: {exc.strerror}", 2)
        source = str(path)
    elif pipeline.sample is not None:
        try:
            values = list(pipeline.sample())
        except Exception as exc:  # the user's function: say which one failed, and why
            fail(f"pipeline {pipeline.name!r}: its sample failed: {type(exc).__name__}: {exc}")
        source = f"the sample of pipeline {pipeline.name!r}"
    else:
        fail(f"pipeline {pipeline.name!r} declares no sample events: give --input FILE", 2)
    values = values[:n_events] if n_events is not None else values
    if not values:
        fail(f"{source} holds no events", 2)
    schema = pipeline.schema
    events = []
    for line, value in enumerate(values, 1):
        event = schema.validate(None, value)
        if isinstance(event, Invalid):  # the file is wrong, not the worker
            fail(f"{source}, event {line}: not an event of {pipeline.name!r}: {event.message}", 2)
        events.append(event)
    times = np.arange(len(events), dtype=np.float64)  # no event time: evenly paced
    if schema.time is not None:
        times = np.maximum.accumulate([float(getattr(e, schema.time)) for e in events])
    span = float(times[-1] - times[0])
    scale = (len(events) / rate / span) if rate and span > 0 else 0.0
    rng = np.random.default_rng(seed)
    every = max(1, round(1 / MALFORMED_SHARE))
    records: list[tuple[str | None, bytes | None, bytes]] = []
    at: list[float] = []
    for index, (event, value) in enumerate(zip(events, values, strict=True)):
        key = str(getattr(event, schema.key)).encode()
        when = float(times[index] - times[0]) * scale
        records.append((str(getattr(event, schema.event_id)), key, value))
        at.append(when)
        if index % every == every // 2 or (index == len(events) - 1 and len(records) == index + 1):
            records.append((None, *_malformed(orjson.loads(value), schema.key, schema.event_id,
                                              int(rng.integers(4)), index)))  # fmt: skip
            at.append(when)
    ids = {event_id for event_id, _, _ in records if event_id is not None}
    if schema.time is not None and span > 0:
        days = span / DAY
        source += f": {days:,.0f} days of event time in {at[-1]:,.1f} s"
    return Plan(records, at, ids, source)


def _malformed(
    event: dict[str, object], key: str, event_id: str, kind: int, serial: int
) -> tuple[bytes | None, bytes]:
    """A record that must become a dead letter, made from a valid event."""
    entity = str(event[key]).encode()
    if kind == 0:
        return entity, b"{not json"
    if kind == 1:
        return entity, orjson.dumps([event])  # JSON, not an object
    if kind == 2:
        return entity, orjson.dumps({k: v for k, v in event.items() if k != event_id})
    return b"someone-else", orjson.dumps({**event, event_id: f"demo-bad-{serial}"})


def _run(
    console: Console,
    settings: Settings,
    worker: WorkerProcess,
    plan: Plan,
    rate: float,
    timeout: float,
) -> bool:
    console.print(f"replaying {plan.source}")
    bootstrap = settings.bootstrap_servers
    producer = _producer(settings)
    reader = OutputReader(bootstrap, settings.scores_topic, settings.dlq_topic, settings.partitions)
    sent_at: dict[str, int] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    n_events, n_bad = len(plan.ids), plan.n_bad
    started = time.monotonic()
    with Progress(*columns, console=console) as progress:
        publish = progress.add_task("published", total=len(plan.records))
        done = progress.add_task("scored + dead-lettered", total=len(plan.records))
        for index, ((event_id, key, value), at) in enumerate(
            zip(plan.records, plan.at, strict=True)
        ):
            lag = started + at - time.monotonic()
            if lag > 0:
                time.sleep(lag)
                reader.poll(0)
            now_ms = int(time.time() * 1000)
            producer.produce(settings.events_topic, key=key, value=value, timestamp=now_ms)
            if event_id is not None:
                sent_at[event_id] = now_ms
            producer.poll(0)
            if index % 500 == 0:
                progress.update(publish, completed=index)
                progress.update(done, completed=len(reader.output.scores) + len(reader.output.dead))
        producer.flush()
        progress.update(publish, completed=len(plan.records))
        published = time.monotonic()
        deadline = published + timeout
        while time.monotonic() < deadline:
            reader.poll(0.2)
            out = reader.output
            progress.update(done, completed=len(out.scores) + len(out.dead))
            if len(out.scored_ids()) >= n_events and len(out.dead) >= n_bad:
                break
    finished = time.monotonic()
    out = reader.output
    reader.close()
    return _summary(console, worker, labeled_ids=plan.ids, out=out, n_bad=n_bad,
                    sent_at=sent_at, seconds=finished - started, rate=rate)  # fmt: skip


def _summary(
    console: Console,
    worker: WorkerProcess,
    *,
    labeled_ids: set[str],
    out: Output,
    n_bad: int,
    sent_at: dict[str, int],
    seconds: float,
    rate: float,
) -> bool:
    scored = out.scored_ids()
    missing = labeled_ids - scored
    duplicates = len(out.scores) - len(scored)
    # Per-key order: within a key, source offsets of first scores must increase.
    last_offset: dict[bytes, int] = defaultdict(lambda: -1)
    seen: set[str] = set()
    disorder = 0
    latencies = []
    for message, value in out.scores:
        if value["event_id"] in seen:
            continue
        seen.add(value["event_id"])
        key = message.key() or b""
        offset = value["source"]["offset"]
        if offset <= last_offset[key]:
            disorder += 1
        last_offset[key] = offset
        # Event record timestamp (set when published) to score record timestamp.
        latencies.append(message.timestamp()[1] - sent_at[value["event_id"]])
    metrics = worker.metrics()
    batches = metric_value(metrics, "streamscore_batch_size_count")
    batch_mean = metric_value(metrics, "streamscore_batch_size_sum") / batches if batches else 0.0
    lat = np.asarray([x for x in latencies if x >= 0], dtype=np.float64)
    p50, p99 = np.percentile(lat, [50, 99]) if len(lat) else (float("nan"), float("nan"))
    # Its shares, from the worker's own histograms: Kafka's up to the fetch, then the worker's.
    shares = [
        histogram_quantiles(histogram_buckets(metrics, f"streamscore_{name}_latency_seconds"))
        for name in ("arrival", "processing")
    ]

    values = np.asarray([value["score"] for _, value in out.scores], dtype=np.float64)
    mean_score = float(values.mean()) if len(values) else float("nan")
    high_share = float((values >= 0.5).mean()) if len(values) else 0.0
    offered = f"offered at {rate:,.0f}/s" if rate else "offered unpaced"
    table = Table(title="streamscore demo", show_header=False)
    rows = [
        ("events published",
         f"{len(labeled_ids) + n_bad} ({len(labeled_ids)} valid, {n_bad} malformed)"),
        ("scored", f"{len(scored)} (duplicates: {duplicates})"),
        ("dead letters", f"{len(out.dead)}"),
        ("unscored valid events", f"{len(missing)}"),
        ("per-key order violations", f"{disorder}"),
        ("throughput", f"{len(scored) / seconds:,.0f} events/s over {seconds:.1f}s ({offered})"),
        ("end-to-end latency p50 / p99", f"{p50:.1f} ms / {p99:.1f} ms"),
        ("  of which before the worker", _ms(*shares[0])),
        ("  of which in the worker", _ms(*shares[1])),
        ("mean batch size", f"{batch_mean:.1f} ({batches:.0f} batches)"),
        ("scores: mean / share >= 0.5", f"{mean_score:.3f} / {high_share:.1%}"),
    ]  # fmt: skip
    for name, text in rows:
        table.add_row(name, text)
    console.print(table)
    ok = not missing and len(out.dead) == n_bad and disorder == 0
    console.print("[bold green]OK[/]: every valid event scored, every malformed one "
                  "dead-lettered, in order per key" if ok else "[bold red]FAILED[/]",
                  soft_wrap=True)  # fmt: skip
    return ok


def _ms(p50_s: float, p99_s: float) -> str:
    return f"{p50_s * 1000:.1f} ms / {p99_s * 1000:.1f} ms"
