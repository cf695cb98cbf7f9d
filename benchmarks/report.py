"""The report: Markdown tables, a JSON copy of every number, and PNG plots.

Plots need matplotlib (the ``bench`` extra); without it the tables are still
written and the report says the plots were skipped.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, get_args

import orjson
from pydantic import SecretStr

from benchmarks.configs import CONFIGS, Kind
from benchmarks.measure import Percentiles
from benchmarks.runner import WARM_UP_S, Phase, Results
from streams.settings import ENV_PREFIX, Settings

_MIB = 2**20
_NONE = "-"  # a cell with nothing measured


def inherited_settings() -> dict[str, str]:
    """``STREAMSCORE_*`` variables where the bench runs: every streamscore worker it starts
    inherits them, so a run with any of them set is not streamscore as shipped. Secrets
    (the settings typed ``SecretStr``) are named, their values not written."""
    secret = {
        f"{ENV_PREFIX}{name.upper()}"
        for name, field in Settings.model_fields.items()
        if field.annotation is SecretStr or SecretStr in get_args(field.annotation)
    }
    return {
        k: "***" if k in secret else v
        for k, v in sorted(os.environ.items())
        if k.startswith(ENV_PREFIX)
    }


def machine() -> str:
    """One line about where the numbers come from."""
    cpu = "unknown CPU"
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f", {int(line.split()[1]) / 2**20:.0f} GiB memory"
    except OSError:
        pass
    load = ", load average {:.2f} {:.2f} {:.2f} at the end".format(*os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({cpu}){memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}{load}"
    )


def revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"{head}{' with uncommitted changes' if dirty else ''}"


def _ms(value: float) -> str:
    return _NONE if math.isnan(value) else f"{value:,.0f}"


def _us(value: float | None) -> str:
    return _NONE if value is None else f"{value:,.1f}"


def _mib(value: int) -> str:
    return f"{value / _MIB:,.0f}"


def _batch(phase: Phase) -> str:
    return _NONE if phase.mean_batch is None else f"{phase.mean_batch:,.1f}"


def _name(key: str) -> str:
    return f"({key}) {CONFIGS[key].name}"


def _p50_p99(value: Percentiles | None) -> str:
    return _NONE if value is None else f"{_ms(value.p50)} / {_ms(value.p99)}"


def _load_row(p: Phase) -> str:
    return (
        f"| {_name(p.config)} | {p.offered_rate or 0:,.0f} | {p.rate:,.0f} | {p.records:,} "
        f"| {_ms(p.latency.p50)} | {_ms(p.latency.p95)} | **{_ms(p.latency.p99)}** "
        f"| {_ms(p.latency.max)} | {_p50_p99(p.arrival)} | {_p50_p99(p.in_worker)} "
        f"| {_batch(p)} | {_mib(p.peak_rss)} "
        f"| {_cores(p.process_cpu)} | {_cores(p.bench_cpu)} |"
    )


def _cores(value: float | None) -> str:
    return _NONE if value is None else f"{value:.2f}"


def _rounds(results: Results) -> list[str]:
    """Each round's drain rates side by side, with the medians (and the peer ratio)."""
    configs = results.options.configs
    peer = next((k for k in configs[1:] if CONFIGS[k].kind is Kind.QUIX), None)
    ratio = f" {_name(configs[0])} / {_name(peer)} |" if peer else ""
    lines = [
        "",
        "## Repeated drains",
        "",
        f"Every configuration drained its own backlog {results.options.rounds} times, "
        "alternating (round 1 is the table above). On a shared machine a drain's rate moves "
        "by a fifth or more from one minute to the next: compare within a round, and the "
        "medians. events/s (CPU µs/event of the process):",
        "",
        "| round | " + " | ".join(_name(k) for k in configs) + " |" + ratio,
        "|--:|" + "--:|" * (len(configs) + (1 if peer else 0)),
    ]
    rates: dict[str, list[float]] = {k: [] for k in configs}
    ratios: list[float] = []
    for number in range(1, results.options.rounds + 1):
        drains = {p.config: p for p in results.drains(number)}
        cells = []
        for key in configs:
            p = drains.get(key)
            if p is None:
                cells.append(_NONE)
                continue
            rates[key].append(p.rate)
            cells.append(f"{p.rate:,.0f} ({_us(p.cpu_us_per_event)})")
        row = f"| {number} | " + " | ".join(cells) + " |"
        if peer:
            mine, theirs = drains.get(configs[0]), drains.get(peer)
            if mine and theirs and theirs.rate:
                ratios.append(mine.rate / theirs.rate)
                row += f" {ratios[-1]:.2f}x |"
            else:
                row += f" {_NONE} |"
        lines.append(row)
    medians = [f"**{statistics.median(v):,.0f}**" if v else _NONE for v in rates.values()]
    row = "| median | " + " | ".join(medians) + " |"
    if peer:
        row += f" **{statistics.median(ratios):.2f}x** |" if ratios else f" {_NONE} |"
    lines.append(row)
    return lines


def _settings_line() -> list[str]:
    settings = inherited_settings()
    if not settings:
        return []
    spelled = " ".join(f"`{k}={v}`" for k, v in settings.items())
    return [
        f"- settings from the environment, in every streamscore worker of this run: {spelled} "
        "(so streamscore here is not as shipped where these differ from the defaults)"
    ]


def markdown(results: Results, command: str, plots: list[str]) -> str:
    options = results.options
    workload = options.workload
    lines = [
        f"# streamscore bench — {time.strftime('%Y-%m-%d %H:%M %Z')}",
        "",
        f"- command: `{command}`",
        *_settings_line(),
        f"- machine: {machine()}",
        f"- code: {revision()}; one embedded broker (Tansu) for every configuration",
        f"- pipeline: {workload.pipeline}"
        + ("" if workload.pipeline == "fraud" else " (its declared sample, replayed)"),
        f"- input: {workload.events:,} records ({workload.valid:,} events, "
        f"{workload.malformed:,} malformed), "
        + (f"{workload.keys:,} keys, " if workload.pipeline == "fraud" else "")
        + f"{workload.partitions} partitions, mean value {results.mean_value_bytes:,.0f} bytes, "
        f"seed {workload.seed}",
        "",
        "## Throughput: draining the pre-loaded backlog",
        "",
        "Each process starts after its backlog is published. events/s counts outputs "
        "(scores, dead letters, passed-through records) from the first output record's "
        "timestamp to the last. CPU µs/event is the CPU time the process, and the "
        "embedded broker, used over that same span, per output. The latency columns here "
        "are the time records waited in the backlog (input timestamp at pre-load → output "
        "timestamp): they grow with the backlog, see the next table for latency under load.",
        "",
        "| configuration | events/s | outputs | dead letters | missing | duplicates "
        "| mean batch | peak RSS MiB | startup s | CPU µs/event: process / broker "
        "| backlog wait p50 / p95 / p99 ms |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in results.drains():
        startup = _NONE if p.startup_s is None else f"{p.startup_s:.1f}"
        lines.append(
            f"| {_name(p.config)} | **{p.rate:,.0f}** | {p.scored + p.dead + p.other:,} "
            f"| {p.dead:,} | {p.missing:,} | {p.duplicates:,} | {_batch(p)} "
            f"| {_mib(p.peak_rss)} | {startup} "
            f"| {_us(p.cpu_us_per_event)} / {_us(p.broker_cpu_us_per_event)} "
            f"| {_ms(p.latency.p50)} / {_ms(p.latency.p95)} / {_ms(p.latency.p99)} |"
        )
    if options.rounds > 1:
        lines += _rounds(results)
    loads = [p for p in results.phases if p.kind == "load"]
    if loads or results.skipped:
        basis = (
            "the given rates" if options.latency_rates
            else f"{', '.join(f'{x:g}' for x in options.latency_loads)} of "
            + ("each configuration's own drain rate" if options.latency_basis == "own"
               else f"the drain rate of {_name(options.configs[0])}")
        )  # fmt: skip
        lines += [
            "",
            "## Latency under a fixed offered load",
            "",
            f"Events published by a paced producer for {options.latency_seconds:g} s at "
            f"{basis}, each load on a new embedded broker with new topics and a newly started "
            f"process (after a {WARM_UP_S:g} s warm-up at the same rate), so that every load "
            "meets a broker in the same state; latency is input record timestamp → output "
            "record timestamp of each event (see below for what each configuration's output "
            "timestamp means). For streamscore, from its own histograms (interpolated "
            'within buckets, as Prometheus does), the shares of it: "before worker" is '
            "Kafka's up to the worker (`streamscore_arrival_latency_seconds`: record "
            'timestamp → the fetch that brought the event), "in worker" its own '
            "(`streamscore_processing_latency_seconds`: that fetch → the score handed to "
            "the producer). "
            "achieved/s runs from the first input to the last output. "
            "process CPU and bench CPU are the cores the measured process and the bench "
            "(its paced producer) used while the load was offered.",
            "",
            "| configuration | offered/s | achieved/s | events | p50 ms | p95 ms | p99 ms "
            "| max ms | before worker p50 / p99 ms | in worker p50 / p99 ms | mean batch "
            "| peak RSS MiB | process CPU | bench CPU |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        order = {key: i for i, key in enumerate(options.configs)}
        rows = [(order[p.config], p.offered_rate or 0.0, _load_row(p)) for p in loads]
        for key, rate, why in results.skipped:
            rows.append(
                (order[key], rate, f"| {_name(key)} | {rate:,.0f} | not run: {why} |||||||||||")
            )
        lines += [row for _, _, row in sorted(rows)]
    bursts = [p for p in results.phases if p.kind == "burst"]
    if bursts:
        lines += [
            "",
            "## Burst: memory under a backlog that arrives while the process runs",
            "",
            f"{options.burst:g} s worth of each configuration's drain rate, published as fast "
            "as the producer goes while the process runs. Peak RSS is the kernel's high-water "
            "mark of the process (plus any children), reset when the burst starts; "
            "max in flight is the highest `streamscore_in_flight` sampled every 0.25 s "
            "(`STREAMSCORE_MAX_IN_FLIGHT` bounds it, plus one fetch).",
            "",
            "| configuration | burst events | drained in s | events/s | peak RSS MiB "
            "| drain peak RSS MiB | max in flight |",
            "|---|--:|--:|--:|--:|--:|--:|",
        ]
        for p in bursts:
            drain = results.drain(p.config)
            flight = _NONE if p.max_in_flight is None else f"{p.max_in_flight:,.0f}"
            lines.append(
                f"| {_name(p.config)} | {p.records:,} | {p.seconds:,.1f} | {p.rate:,.0f} "
                f"| **{_mib(p.peak_rss)}** | {_mib(drain.peak_rss) if drain else _NONE} "
                f"| {flight} |"
            )
    overloads = [p for p in results.phases if p.kind == "overload"]
    if overloads:
        lines += [
            "",
            "## Overload: offered past the drain peak",
            "",
            f"{options.overload:g} times streamscore's drain rate offered for "
            f"{options.latency_seconds:g} s (on a new broker, after a warm-up), with "
            f"`STREAMSCORE_DEADLINE_MS={options.overload_deadline_ms:g}`: an event older than "
            "that when its batch is scored skips the primary model (a degraded score from the "
            "fallback). What cannot be admitted waits in Kafka, so end-to-end latency grows "
            "with the backlog; what is admitted keeps the bounded wait. In flight and paused "
            "partitions are the highest `streamscore_in_flight` and "
            "`streamscore_paused_partitions` (every partition the worker reads, profiles "
            "included: intake stops fetching them all) sampled every 0.1 s; in the worker is "
            "`streamscore_processing_latency_seconds` (fetch to score handed to the producer).",
            "",
            "| configuration | offered/s | achieved/s | events | in the worker p50 / p99 ms "
            "| end to end p50 / p99 ms | max in flight | max paused partitions "
            "| degraded | deadline missed | CPU cores: process / bench |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for p in overloads:
            share = (p.degraded or 0) / max(1, p.scored)
            flight = _NONE if p.max_in_flight is None else f"{p.max_in_flight:,.0f}"
            paused = _NONE if p.max_paused is None else f"{p.max_paused:,.0f}"
            lines.append(
                f"| {_name(p.config)} | {p.offered_rate or 0:,.0f} | {p.rate:,.0f} "
                f"| {p.records:,} | **{_p50_p99(p.in_worker)}** | {_p50_p99(p.latency)} "
                f"| {flight} | {paused} | {p.degraded or 0:,} ({share:.1%}) "
                f"| {p.deadline_missed or 0:,} | {_cores(p.process_cpu)} / {_cores(p.bench_cpu)} |"
            )
    lines += ["", "## Configurations", ""]
    for key in options.configs:
        config = CONFIGS[key]
        lines.append(f"- **({key}) {config.name}**: {config.summary}. Latency: {config.latency}.")
    losses = results.losses()
    if losses:
        lines += ["", "## Lost events", ""]
        lines += [
            f"- {_name(p.config)}, {p.kind}: {p.missing:,} of {p.records:,} inputs have no output"
            for p in losses
        ]
    if results.stages is not None:
        s = results.stages
        lines += [
            "",
            "## The pipeline's stages without Kafka",
            "",
            f"`python -m benchmarks.pipeline_probe --pipeline {workload.pipeline}`: "
            f"{int(s['events']):,} events of its sample through the worker's own stage code, "
            f"in chunks, best of {int(s['repeats'])} runs, one torch thread; the model batched "
            f"{int(s['batch'])} events per call against one event per call.",
            "",
            "| validate | features (state walk included) | model, batched "
            "| model, one at a time | batched speed-up |",
            "|--:|--:|--:|--:|--:|",
            f"| {s['validate_us']:.2f} µs | {s['features_us']:.2f} µs "
            f"| {s['model_batched_us']:.2f} µs | {s['model_single_us']:.1f} µs "
            f"| **{s['batched_speedup']:.0f}x** |",
        ]
    lines += [""] + [f"![{Path(plot).stem}]({plot})" for plot in plots]
    return "\n".join(lines).rstrip() + "\n"


def to_json(results: Results, command: str) -> bytes:
    def default(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        raise TypeError

    data = {
        "command": command,
        "settings": inherited_settings(),
        "machine": machine(),
        "revision": revision(),
        "mean_value_bytes": results.mean_value_bytes,
        "options": dataclasses.asdict(results.options),
        "phases": [dataclasses.asdict(p) for p in results.phases],
        "skipped": results.skipped,
        "stages": results.stages,
    }
    return orjson.dumps(
        data, default=default, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
    )


def plot(results: Results, directory: Path, name: str) -> list[Path]:
    """Throughput bars and latency-vs-load lines; nothing without matplotlib."""
    try:
        # Imported by name: an optional extra, so the package type-checks and imports without it.
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return []
    matplotlib.use("Agg")
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    importlib.import_module("matplotlib.ticker")
    written = []
    drains = results.drains()
    if drains:
        fig, ax = pyplot.subplots(figsize=(8, 1.2 + 0.6 * len(drains)))
        labels = [_name(p.config) for p in reversed(drains)]
        rates = [p.rate for p in reversed(drains)]
        # No model runs in the peers' rows: hatch them so they read as floors.
        hatches = ["" if CONFIGS[p.config].scores else "//" for p in reversed(drains)]
        bars = ax.barh(labels, rates, color="#4472c4", hatch=hatches)
        ax.bar_label(bars, labels=[f" {r:,.0f}" for r in rates])
        ax.set_xlabel("events/s, draining a pre-loaded backlog")
        ax.set_xlim(0, max(max(rates) * 1.2, 1.0))  # all zero when everything was lost
        ax.set_title(
            f"Throughput: {results.options.workload.events:,} records, "
            f"{results.options.workload.partitions} partitions"
        )
        fig.tight_layout()
        path = directory / f"throughput-{name}.png"
        fig.savefig(path, dpi=120)
        pyplot.close(fig)
        written.append(path)
    loads = [p for p in results.phases if p.kind == "load"]
    if loads:
        fig, ax = pyplot.subplots(figsize=(10, 4.5))
        for key in results.options.configs:
            points = sorted(
                (p for p in loads if p.config == key), key=lambda p: p.offered_rate or 0
            )
            if not points:
                continue
            x = [p.offered_rate for p in points]
            (line,) = ax.plot(x, [p.latency.p50 for p in points], marker="o",
                              label=f"{_name(key)} p50")  # fmt: skip
            ax.plot(x, [p.latency.p95 for p in points], marker="^", linestyle="--",
                    color=line.get_color(), label=f"{_name(key)} p95")  # fmt: skip
            ax.plot(x, [p.latency.p99 for p in points], marker="s", linestyle=":",
                    color=line.get_color(), label=f"{_name(key)} p99")  # fmt: skip
            if all(p.in_worker is not None for p in points):
                ax.plot(x, [p.in_worker.p99 for p in points if p.in_worker is not None],
                        marker="x", linestyle="-.", color=line.get_color(),
                        label=f"{_name(key)} p99 in worker")  # fmt: skip
        ax.set_xlabel("offered load, events/s")
        ax.set_ylabel("end-to-end latency, ms")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title("Latency percentiles vs offered load")
        fig.tight_layout()
        path = directory / f"latency-{name}.png"
        fig.savefig(path, dpi=120)
        pyplot.close(fig)
        written.append(path)
    return written


def write(results: Results, directory: Path, name: str, command: str) -> tuple[str, list[Path]]:
    """Write ``results-NAME.md``, ``results-NAME.json`` and the plots; return the Markdown."""
    directory.mkdir(parents=True, exist_ok=True)
    plots = plot(results, directory, name)
    text = markdown(results, command, [p.name for p in plots])
    if not plots:
        text += "\n(Plots skipped: matplotlib is not installed; `make bench` installs it.)\n"
    paths = [directory / f"results-{name}.md", directory / f"results-{name}.json", *plots]
    paths[0].write_text(text)
    paths[1].write_bytes(to_json(results, command))
    return text, paths
