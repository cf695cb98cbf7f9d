"""``streamscore bench``: streamscore against per-event designs and Quix, on one broker.

See ``docs/benchmarks.md``. Exit 0 when every configuration accounted for
every input, 1 when one lost events or failed (the report is still written
for a loss), 2 for bad arguments.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import click

from benchmarks.configs import CONFIGS, Kind
from benchmarks.exceptions import BenchmarkError, EventsLost
from benchmarks.preload import Workload
from benchmarks.report import inherited_settings, write
from benchmarks.runner import Basis, Options, run
from streams.cli.common import EXIT_USAGE, fail, settings_or_exit
from streams.pipeline import PipelineError, load_pipeline


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        fail(f"{text!r} is not a comma-separated list of numbers", EXIT_USAGE)


def _command_line(ctx: click.Context) -> str:
    """The run's every option (and the settings it passes on), spelled out: the report says
    exactly how to repeat it."""
    settings = [f"{k}={shlex.quote(v)} " for k, v in inherited_settings().items()]
    argv = ["streamscore", "bench"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if isinstance(param, click.Option) and value is not None and param.opts:
            argv += [param.opts[0], str(value)]
    return "".join(settings) + shlex.join(argv)


def _default_quix_python() -> Path:
    # `make bench` builds Quix's virtualenv inside streamscore's (quixstreams pins
    # confluent-kafka and pydantic below what streamscore needs).
    return Path(sys.prefix) / "quix-peer" / "bin" / "python"


@click.command()
@click.option(
    "--events",
    "n_events",
    default=400_000,
    show_default=True,
    help="Records pre-loaded for each configuration (malformed ones included).",
)
@click.option(
    "--pipeline",
    default="fraud",
    show_default=True,
    help="What streamscore serves: fraud (synthetic events) or a pipeline that declares a "
    "sample (replayed from its start, again with new ids and later times as often as needed).",
)
@click.option(
    "--keys",
    default=1_000,
    show_default=True,
    help="Distinct entity ids (record keys) of the fraud events (a sample has its own).",
)
@click.option("--partitions", default=8, show_default=True, help="Partitions of every topic.")
@click.option(
    "--payload-bytes",
    default=0,
    show_default=True,
    help="fraud: pad each event's free-text field so its value is this many bytes "
    "(0: ~150, unpadded).",
)
@click.option(
    "--malformed-share",
    default=0.005,
    show_default=True,
    help="Share of the records that are malformed (dead letters).",
)
@click.option(
    "--configs",
    "config_keys",
    default="a,b,c,d,e",
    show_default=True,
    help="Configurations to run, in order: a streamscore, b batch size 1, "
    "c naive Faust, d Quix bare, e bare confluent-kafka.",
)
@click.option(
    "--latency-loads",
    default="0.25,0.5,0.75",
    show_default=True,
    help="Offered loads as fractions of the first configuration's drain rate "
    "(empty: no latency runs).",
)
@click.option(
    "--latency-rates", default="", help="Offered loads in events/s (instead of --latency-loads)."
)
@click.option(
    "--latency-basis",
    type=click.Choice(["first", "own"]),
    default="first",
    show_default=True,
    help="Fractions of the first configuration's drain rate (same offered rates for "
    "all), or of each configuration's own.",
)
@click.option(
    "--latency-seconds",
    default=20.0,
    show_default=True,
    help="How long each offered load is published.",
)
@click.option(
    "--burst",
    default=10.0,
    show_default=True,
    help="Burst of this many seconds of each configuration's drain rate (0: none).",
)
@click.option(
    "--overload",
    default=1.5,
    show_default=True,
    help="streamscore (a) offered this multiple of its drain rate for --latency-seconds, "
    "with a deadline set: in flight, paused partitions, in-worker p99, degraded share (0: none).",
)
@click.option(
    "--overload-deadline-ms",
    default=250.0,
    show_default=True,
    help="STREAMSCORE_DEADLINE_MS of the overload phase: older events skip the primary model.",
)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    help="Give up on a phase when its committed offsets stall this many seconds.",
)
@click.option("--seed", default=11, show_default=True, help="Seed of the synthetic input.")
@click.option(
    "--naive-fetch-wait-ms",
    default=10,
    show_default=True,
    help="Fetch wait of the naive Faust app (1500: Faust's own).",
)
@click.option(
    "--quix-python",
    type=click.Path(path_type=Path),
    default=None,
    help="Python of the Quix Streams virtualenv  [default: .venv/quix-peer/bin/python]",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=Path("docs/benchmarks"),
    show_default=True,
    help="Directory for results-NAME.md/.json and the plots.",
)
@click.option(
    "--rounds",
    default=1,
    show_default=True,
    help="Drains of every configuration, alternating; the report gives each round and the "
    "medians (latency loads and the burst run in round 1 only).",
)
@click.option("--name", default="local", show_default=True, help="Names the result files.")
def bench(
    n_events: int,
    pipeline: str,
    keys: int,
    partitions: int,
    payload_bytes: int,
    malformed_share: float,
    config_keys: str,
    latency_loads: str,
    latency_rates: str,
    latency_basis: Basis,
    latency_seconds: float,
    burst: float,
    overload: float,
    overload_deadline_ms: float,
    timeout: float,
    seed: int,
    naive_fetch_wait_ms: int,
    quix_python: Path | None,
    output: Path,
    rounds: int,
    name: str,
) -> None:
    """Measure throughput, latency and memory of streamscore and its peers on one broker."""
    configs = tuple(k.strip() for k in config_keys.split(",") if k.strip())
    unknown = [k for k in configs if k not in CONFIGS]
    if not configs or unknown or len(set(configs)) != len(configs):
        fail(f"--configs {config_keys!r}: name each of a, b, c, d, e at most once", EXIT_USAGE)
    if n_events < 1 or keys < 1 or partitions < 1 or payload_bytes < 0 or rounds < 1:
        fail("--events, --keys, --partitions and --rounds must be positive", EXIT_USAGE)
    if not 0 <= malformed_share < 1 or latency_seconds <= 0 or burst < 0 or timeout <= 0:
        fail("--malformed-share must be in [0, 1); --latency-seconds and --timeout "
             "positive; --burst not negative", EXIT_USAGE)  # fmt: skip
    if overload < 0 or (0 < overload <= 1) or overload_deadline_ms <= 0:
        fail("--overload must be 0 (none) or above 1 (a multiple of the drain rate); "
             "--overload-deadline-ms positive", EXIT_USAGE)  # fmt: skip
    loads, rates = _floats(latency_loads), _floats(latency_rates)
    if any(x <= 0 for x in loads + rates):
        fail("--latency-loads and --latency-rates must be positive", EXIT_USAGE)
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        fail(f"--name {name!r}: letters, digits, '-', '_' and '.' only", EXIT_USAGE)
    if pipeline != "fraud":
        if any(CONFIGS[k].kind is Kind.NAIVE_FAUST for k in configs):
            fail("configuration c (naive Faust) scores fraud events only: leave it out "
                 f"for --pipeline {pipeline}", EXIT_USAGE)  # fmt: skip
        if payload_bytes:
            fail("--payload-bytes pads the fraud events only", EXIT_USAGE)
        try:
            declared = load_pipeline(pipeline)
        except PipelineError as exc:
            fail(str(exc), EXIT_USAGE)
        if declared.sample is None:
            fail(f"pipeline {pipeline!r} declares no sample for the bench to replay", EXIT_USAGE)
    quix = quix_python or _default_quix_python()
    if any(CONFIGS[k].kind is Kind.QUIX for k in configs) and not quix.exists():
        fail(f"configuration d needs Quix Streams in its own virtualenv, {quix} is missing: "
             "run `make bench`, or leave d out (--configs a,b,c)", EXIT_USAGE)  # fmt: skip
    settings_or_exit()  # a bad STREAMSCORE_* value (passed on to the workers) stops here
    options = Options(
        workload=Workload(
            n_events, keys, partitions, payload_bytes, malformed_share, seed, pipeline
        ),
        configs=configs,
        latency_loads=loads,
        latency_rates=rates,
        latency_basis=latency_basis,
        latency_seconds=latency_seconds,
        burst=burst,
        overload=overload,
        overload_deadline_ms=overload_deadline_ms,
        stall_timeout=timeout,
        naive_fetch_wait_ms=naive_fetch_wait_ms,
        quix_python=quix,
        rounds=rounds,
    )
    command = _command_line(click.get_current_context())
    workdir = Path(tempfile.mkdtemp(prefix="streamscore-bench-"))
    try:
        results = run(options, workdir, lambda line: click.echo(line, err=True))
    except BenchmarkError as exc:
        fail(f"{exc} (logs kept in {workdir})")
    text, paths = write(results, output, name, command)
    click.echo(text)
    click.echo("written: " + ", ".join(str(p) for p in paths), err=True)
    losses = results.losses()
    if losses:
        lost = "; ".join(f"({p.config}) {p.kind}: {p.missing:,} of {p.records:,}" for p in losses)
        fail(str(EventsLost(f"events lost: {lost}; logs kept in {workdir}")))
    shutil.rmtree(workdir, ignore_errors=True)
