"""``streamscore demo``: broker + worker + synthetic traffic, then a summary.

Starts the embedded broker and a real worker process, publishes profiles and
then events at the requested rate (with a few malformed ones mixed in),
reads every score and dead letter back, and checks the outcome: every valid
event scored, every malformed one dead-lettered, per-key order kept. Exit 0
only if so.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path

import click
import numpy as np
import orjson
from confluent_kafka import Producer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.synthetic import SyntheticWorld, malformed_values
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
from streams.settings import Settings

MALFORMED_SHARE = 0.005


@click.command()
@click.option("--events", "n_events", default=20_000, show_default=True, help="Events to publish.")
@click.option("--rate", default=4_000.0, show_default=True, help="Events per second (0: unpaced).")
@click.option("--entities", default=1_000, show_default=True, help="Distinct entity ids (keys).")
@click.option("--seed", default=11, show_default=True, help="Seed of the synthetic traffic.")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for scores.")
def demo(n_events: int, rate: float, entities: int, seed: int, timeout: float) -> None:
    """Score synthetic traffic end to end on an embedded broker and print a summary."""
    if n_events < 1 or rate < 0 or entities < 1:
        fail("--events and --entities must be positive, --rate not negative", 2)
    served_pipeline_or_exit(settings_or_exit())  # a bad value stops here, before anything starts
    console = Console()
    with tempfile.TemporaryDirectory(prefix="streamscore-demo-") as tmp:
        workdir = Path(tmp)
        broker = EmbeddedBroker(log_path=workdir / "broker.log")
        worker: WorkerProcess | None = None
        try:
            bootstrap = broker.start()
            settings = settings_or_exit(broker=f"kafka://{bootstrap}")
            env = {
                "STREAMSCORE_BROKER": f"kafka://{bootstrap}",
                "STREAMSCORE_DATA_DIR": str(workdir / "data"),
                "STREAMSCORE_LOG_LEVEL": "warning",
            }
            console.print(f"broker at [bold]{bootstrap}[/]; starting a worker…")
            started = time.monotonic()
            worker = WorkerProcess(env, workdir / "worker.log").start()
            worker.wait_ready()
            console.print(f"worker ready in {time.monotonic() - started:.1f}s ({worker.url})")
            ok = _run(console, settings, worker, n_events, rate, entities, seed, timeout)
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


def _run(
    console: Console,
    settings: Settings,
    worker: WorkerProcess,
    n_events: int,
    rate: float,
    n_entities: int,
    seed: int,
    timeout: float,
) -> bool:
    world = SyntheticWorld(seed=seed, n_entities=n_entities)
    labeled = world.events(n_events)
    bad = malformed_values(seed, max(1, int(n_events * MALFORMED_SHARE)))
    bootstrap = settings.bootstrap_servers
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 2, "partitioner": "murmur2_random"}
    )
    for profile in world.profiles():
        producer.produce(settings.features_topic, key=str(profile["entity_id"]).encode(),
                         value=orjson.dumps(profile))  # fmt: skip
    producer.flush()

    # Interleave the malformed records evenly among the valid ones.
    plan: list[tuple[str | None, bytes, bytes]] = []  # (event id, key, value)
    every = max(1, n_events // len(bad))
    bad_iter = iter(bad)
    for index, item in enumerate(labeled):
        event = item.event
        key = str(event["entity_id"]).encode()
        plan.append((str(event["event_id"]), key, orjson.dumps(event)))
        if index % every == every - 1:
            value = next(bad_iter, None)
            if value is not None:
                plan.append((None, key, value))
    n_bad = len(plan) - n_events

    reader = OutputReader(bootstrap, settings.scores_topic, settings.dlq_topic, settings.partitions)
    sent_at: dict[str, int] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    started = time.monotonic()
    with Progress(*columns, console=console) as progress:
        publish = progress.add_task("published", total=len(plan))
        done = progress.add_task("scored + dead-lettered", total=len(plan))
        for index, (event_id, key, value) in enumerate(plan):
            if rate:
                lag = started + index / rate - time.monotonic()
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
        progress.update(publish, completed=len(plan))
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
    return _summary(console, worker, labeled_ids={str(x.event["event_id"]) for x in labeled},
                    out=out, n_bad=n_bad, sent_at=sent_at, seconds=finished - started,
                    rate=rate)  # fmt: skip


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
    ]  # fmt: skip
    for name, text in rows:
        table.add_row(name, text)
    console.print(table)
    ok = not missing and len(out.dead) == n_bad and disorder == 0
    console.print("[bold green]OK[/]: every valid event scored, every malformed one "
                  "dead-lettered, in order per key" if ok else "[bold red]FAILED[/]")  # fmt: skip
    return ok


def _ms(p50_s: float, p99_s: float) -> str:
    return f"{p50_s * 1000:.1f} ms / {p99_s * 1000:.1f} ms"
