"""One benchmark run: a broker, then each configuration through its phases.

For each configuration, in order: create its topics, publish the profiles
and the backlog, start its process (only now, so that throughput measures
draining a backlog), wait until the backlog is committed, then run the
burst (memory) against the same process, stop it and drop its topics. Each
paced load (latency) then gets a new broker, topics and process of its own. A
phase is complete when the group has committed every input offset; its
outputs are then read back and matched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from benchmarks.configs import CONFIGS, CommandProcess, Config, Launch, start
from benchmarks.exceptions import BenchmarkError, PeerFailed
from benchmarks.measure import (
    CpuTrace,
    OutputTally,
    Percentiles,
    PhaseOutput,
    RssMonitor,
    bucket_percentiles,
    cpu_seconds,
    wait_until_committed,
)
from benchmarks.preload import (
    InputStream,
    Publisher,
    Record,
    Topics,
    Workload,
    create_topics,
    delete_topics,
)
from streams.errors import StreamscoreError
from streams.harness import histogram_buckets, metric_value
from streams.kafka.embedded import EmbeddedBroker

Basis = Literal["first", "own"]
#: The worker's histograms of its own share of latency, and of Kafka's before it.
PROCESSING_LATENCY = "streamscore_processing_latency_seconds"
IN_FLIGHT, PAUSED = "streamscore_in_flight", "streamscore_paused_partitions"
ARRIVAL_LATENCY = "streamscore_arrival_latency_seconds"
Echo = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Options:
    workload: Workload
    configs: tuple[str, ...]
    latency_loads: tuple[float, ...] = (0.25, 0.5, 0.75)
    latency_rates: tuple[float, ...] = ()  # events/s; when given, used instead of the loads
    latency_basis: Basis = "first"
    latency_seconds: float = 20.0
    burst: float = 10.0  # seconds of the configuration's peak; 0: no burst
    stall_timeout: float = 60.0
    naive_fetch_wait_ms: int = 10
    quix_python: Path = Path(".venv/quix-peer/bin/python")
    rounds: int = 1  # drains of every configuration, alternating (latency and burst: round 1)
    overload: float = 0.0  # offered load past the drain peak (1.5: 150%); 0: none
    overload_deadline_ms: float = 250.0  # STREAMSCORE_DEADLINE_MS of the overload phase


@dataclass(frozen=True, slots=True)
class Phase:
    """One measured phase of one configuration."""

    config: str
    kind: Literal["drain", "load", "burst", "overload"]
    offered_rate: float | None  # events/s offered (loads only)
    records: int  # input records published in the phase
    scored: int
    dead: int
    other: int
    duplicates: int
    missing: int
    rate: float  # outputs/s, first to last output record
    latency: Percentiles
    mean_batch: float | None
    in_worker: Percentiles | None  # streamscore: streamscore_processing_latency_seconds
    arrival: Percentiles | None  # streamscore: streamscore_arrival_latency_seconds
    peak_rss: int  # bytes
    seconds: float  # first to last output
    startup_s: float | None = None  # drain: process start to first output
    max_in_flight: float | None = None  # burst: highest streamscore_in_flight sampled
    bench_cpu: float | None = None  # load: the bench's CPU while offering it, in cores
    process_cpu: float | None = None  # load: the measured process's CPU meanwhile, in cores
    cpu_us_per_event: float | None = None  # drain: the process's CPU per output, in µs
    broker_cpu_us_per_event: float | None = None  # drain: the broker's CPU per output, in µs
    note: str = ""
    round: int = 1
    max_paused: float | None = None  # overload: highest streamscore_paused_partitions sampled
    degraded: int | None = None  # overload: scores the ladder degraded (the deadline, mostly)
    deadline_missed: int | None = None  # overload: events past the deadline at scoring

    @property
    def complete(self) -> bool:
        return self.missing == 0


@dataclass(slots=True)
class Results:
    options: Options
    phases: list[Phase] = field(default_factory=list)
    skipped: list[tuple[str, float, str]] = field(default_factory=list)  # config, rate, why
    mean_value_bytes: float = 0.0
    #: A declared pipeline's stages without Kafka (:func:`benchmarks.pipeline_probe.probe`).
    stages: dict[str, float] | None = None

    def drain(self, config: str) -> Phase | None:
        """The configuration's drain of round 1."""
        return next((p for p in self.drains() if p.config == config), None)

    def drains(self, number: int = 1) -> list[Phase]:
        """The drains of one round."""
        return [p for p in self.phases if p.kind == "drain" and p.round == number]

    def losses(self) -> list[Phase]:
        return [p for p in self.phases if not p.complete]


def run(options: Options, workdir: Path, echo: Echo) -> Results:
    """Run every configuration of ``options``; logs and state go under ``workdir``."""
    unknown = [key for key in options.configs if key not in CONFIGS]
    if unknown:
        raise BenchmarkError(
            f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}"
        )
    results = Results(options)
    broker = EmbeddedBroker(log_path=workdir / "broker.log")
    bootstrap = broker.start()
    echo(f"embedded broker at {bootstrap}; logs in {workdir}")
    launch = Launch(bootstrap, options.workload.partitions, workdir,
                    options.naive_fetch_wait_ms, options.quix_python,
                    broker.process.pid if broker.process else None,
                    options.workload.pipeline)  # fmt: skip
    run_id = uuid.uuid4().hex[:6]
    try:
        # Rounds after the first drain again, alternating configurations, so that a slow
        # spell of a shared machine shows up as spread rather than as one configuration's figure.
        for number in range(1, options.rounds + 1):
            for key in options.configs:
                suffix = "" if number == 1 else f"-r{number}"
                topics = Topics(f"bench-{run_id}-{key}{suffix}")
                _run_config(CONFIGS[key], topics, launch, results, echo, number)
    finally:
        broker.stop()
    from benchmarks.pipeline_probe import probe

    echo(f"stages of {options.workload.pipeline} without Kafka ...")
    results.stages = probe(options.workload.pipeline, PROBE_EVENTS, PROBE_BATCH, 3, 1)
    return results


#: Events and batch size of the stage probe the bench ends with.
PROBE_EVENTS, PROBE_BATCH = 20_000, 256


def _rates(options: Options, results: Results, own_peak: float) -> list[float]:
    if options.latency_rates:
        return list(options.latency_rates)
    if options.latency_basis == "own":
        basis = own_peak
    else:
        first = results.drain(options.configs[0])
        basis = first.rate if first is not None else own_peak
    return [load * basis for load in options.latency_loads]


def _run_config(
    config: Config, topics: Topics, launch: Launch, results: Results, echo: Echo, number: int = 1
) -> None:
    """Drain a pre-loaded backlog; in round 1, then the burst and the latency loads."""
    options = results.options
    workload = options.workload
    source = InputStream(workload)
    backlog = source.backlog()
    results.mean_value_bytes = sum(len(r.value) for r in backlog) / max(1, len(backlog))
    tag = config.key if number == 1 else f"{config.key} round {number}"
    with _launched(config, topics, launch, source, options, before_start=backlog) as measured:
        echo(f"[{tag}] {config.name}: pre-loaded {len(backlog):,} records")
        sent_ms = {r.event_id: ms for r, ms in zip(backlog, measured.preloaded, strict=True)
                   if r.event_id}  # fmt: skip
        malformed = len(backlog) - len(sent_ms)
        del backlog
        trace = CpuTrace(measured.pids()).start()
        try:
            drain = measured.phase("drain", None, sent_ms, malformed)
        finally:
            trace.stop()
        startup = (drain.first_ms - measured.started_ms) / 1000.0 if drain.outputs else None
        phase = measured.result(
            drain, "drain", None, len(sent_ms) + malformed, startup=startup,
            cpu_per_event=_cpu_per_event(trace, drain), number=number,
        )  # fmt: skip
        results.phases.append(phase)
        echo(f"[{tag}] drained {phase.records:,} records: {phase.rate:,.0f}/s, "
             f"peak RSS {phase.peak_rss / 2**20:,.0f} MiB")  # fmt: skip
        if not phase.complete or number > 1:
            return  # a configuration that loses events is not measured further
        if options.burst > 0:
            records = source.events(max(1, round(options.burst * phase.rate)))
            burst = measured.burst(records)
            results.phases.append(burst)
            echo(f"[{config.key}] burst of {burst.records:,}: peak RSS "
                 f"{burst.peak_rss / 2**20:,.0f} MiB")  # fmt: skip
            if not burst.complete:
                return
    for index, rate in enumerate(_rates(options, results, phase.rate)):
        if rate > phase.rate:
            why = f"above its drain peak of {phase.rate:,.0f}/s: it would only build a backlog"
            results.skipped.append((config.key, rate, why))
            echo(f"[{config.key}] load {rate:,.0f}/s skipped: {why}")
            continue
        load = _fresh_load(config, Topics(f"{topics.prefix}-l{index}"), launch, source, options,
                           rate)  # fmt: skip
        results.phases.append(load)
        echo(f"[{config.key}] load {rate:,.0f}/s: p50 {load.latency.p50:,.0f} ms, "
             f"p99 {load.latency.p99:,.0f} ms")  # fmt: skip
        if not load.complete:
            return
    if options.overload > 0 and config.batches and not config.env:  # streamscore as shipped
        rate = options.overload * phase.rate
        deadline = {"STREAMSCORE_DEADLINE_MS": f"{options.overload_deadline_ms:g}"}
        overloaded = dataclasses.replace(config, env={**config.env, **deadline})
        over = _fresh_load(overloaded, Topics(f"{topics.prefix}-over"), launch, source, options,
                           rate, kind="overload")  # fmt: skip
        results.phases.append(over)
        p99 = over.in_worker.p99 if over.in_worker else float("nan")
        flight, degraded = over.max_in_flight or 0, over.degraded or 0
        echo(f"[{config.key}] overload {rate:,.0f}/s: in the worker p99 {p99:,.0f} ms, "
             f"max in flight {flight:,.0f}, degraded {degraded:,}")  # fmt: skip


#: Seconds of the offered rate published (and drained) before a load is measured.
WARM_UP_S = 1.0


def _fresh_load(
    config: Config, topics: Topics, launch: Launch, source: InputStream, options: Options,
    rate: float, kind: Literal["load", "overload"] = "load",
) -> Phase:  # fmt: skip
    """One offered load, on a new embedded broker, with new topics and a new process.

    Every load then meets a broker in the same state. The embedded broker
    slows down with what it has served: its fetches take longer the more
    record batches a partition holds, and after some five million records
    (on topics since deleted) the bare client's latency at 8,658 events/s
    was seconds instead of tens of milliseconds. A short warm-up at the same rate
    first lets the process join its group, load its model and settle.
    """
    broker = EmbeddedBroker(log_path=launch.workdir / f"broker-{topics.prefix}.log")
    bootstrap = broker.start()
    pid = broker.process.pid if broker.process else None
    own = dataclasses.replace(launch, bootstrap=bootstrap, broker_pid=pid)
    try:
        with _launched(config, topics, own, source, options) as measured:
            warm = measured.paced(source.events(max(100, round(rate * WARM_UP_S))), rate)
            if not warm.complete:
                return warm
            records = source.events(max(1, round(rate * options.latency_seconds)))
            return measured.paced(records, rate, kind)
    finally:
        broker.stop()


@contextlib.contextmanager
def _launched(
    config: Config, topics: Topics, launch: Launch, source: InputStream, options: Options,
    before_start: Sequence[Record] = (),
) -> Iterator[_Measured]:  # fmt: skip
    """Topics created (with profiles and ``before_start`` published), the process running.

    On the way out the process is stopped and the topics deleted.
    """
    create_topics(launch.bootstrap, topics, options.workload.partitions)
    publisher = Publisher(launch.bootstrap)
    if config.reads_features:
        publisher.publish(topics.features, source.profiles())
    preloaded = publisher.publish(topics.events, ((r.key, r.value) for r in before_start))
    tally = OutputTally(launch.bootstrap, topics.scores, topics.dlq, options.workload.partitions,
                        source.event_id)  # fmt: skip
    started_ms = time.time() * 1000
    process = start(config, topics, launch)
    monitor = RssMonitor(process.pid).start()
    try:
        yield _Measured(config, topics, launch, publisher, tally, process, monitor, options,
                        preloaded, started_ms)  # fmt: skip
    finally:
        monitor.stop()
        process.terminate(timeout=30)
        tally.close()
        delete_topics(launch.bootstrap, topics.prefix)


def _cpu_per_event(trace: CpuTrace, out: PhaseOutput) -> tuple[float | None, float | None]:
    """Microseconds of CPU per output of the process and the broker, over the drain's span."""
    if out.outputs < 2:
        return None, None

    def per_event(name: str) -> float | None:
        seconds = trace.seconds(name, out.first_ms, out.last_ms)
        return None if seconds is None else seconds / out.outputs * 1e6

    return per_event("process"), per_event("broker")


@dataclass
class _Measured:
    """A running configuration and the means to measure it."""

    config: Config
    topics: Topics
    launch: Launch
    publisher: Publisher
    tally: OutputTally
    process: CommandProcess
    monitor: RssMonitor
    options: Options
    preloaded: list[int]  # timestamps (epoch ms) of the records published before the start
    started_ms: float  # when the process was started
    _batches: tuple[float, float] = (0.0, 0.0)  # streamscore_batch_size sum, count so far
    _histograms: dict[str, dict[float, float]] = field(default_factory=dict)  # buckets so far
    _in_flight: float = 0.0
    _paused: float = 0.0

    def pids(self) -> dict[str, int]:
        """The measured process and the embedded broker (whose CPU is charged too)."""
        pids = {"process": self.process.pid}
        if self.launch.broker_pid is not None:
            pids["broker"] = self.launch.broker_pid
        return pids

    def phase(
        self,
        kind: str,
        on_tick: Callable[[], None] | None,
        sent_ms: dict[str, int],
        malformed: int,
    ) -> PhaseOutput:
        """Wait for the group to commit everything published, then read the outputs."""
        try:
            done = wait_until_committed(
                self.launch.bootstrap, self.topics.group, self.topics.events,
                self.publisher.ends_of(self.topics.events),
                alive=lambda: self.process.returncode is None,
                stall_s=self.options.stall_timeout, on_tick=on_tick,
            )  # fmt: skip
        except BenchmarkError as exc:
            raise PeerFailed(
                f"configuration {self.config.key} ({self.config.name}): {exc} during the "
                f"{kind} (exit code {self.process.returncode}); log: {self.process.log_path}"
            ) from exc
        # Not complete: read what came out all the same, so the report says what is missing.
        return self.tally.read(sent_ms, malformed, quiet_s=3.0 if done else 1.0)

    def paced(
        self, records: Sequence[Record], rate: float, kind: Literal["load", "overload"] = "load"
    ) -> Phase:
        """Publish at ``rate``; an overload also samples in-flight and paused partitions."""
        self.monitor.reset()
        self._in_flight = self._paused = 0.0
        sampling = kind == "overload" and self.config.batches
        before = self._ladder() if sampling else None
        # CPU shares while the load is offered: the load generator shares the machine.
        wall, bench, used = time.monotonic(), time.process_time(), cpu_seconds(self.process.pid)
        with self._sampler() if sampling else contextlib.nullcontext():
            sent = self.publisher.publish_paced(self.topics.events, records, rate)
            wall = time.monotonic() - wall
            cpu = (
                (time.process_time() - bench) / wall,
                (cpu_seconds(self.process.pid) - used) / wall,
            )
            sent_ms = {str(r.event_id): ms for r, ms in zip(records, sent, strict=True)}
            out = self.phase(kind, None, sent_ms, 0)
        # From the first input to the last output: at most the offered rate, and short of
        # it when the configuration did not keep up.
        achieved = out.outputs / (max(out.last_ms - sent[0], 1) / 1000.0)
        phase = self.result(out, kind, rate, len(records), achieved=achieved, cpu=cpu)
        if before is None:
            return phase
        after = self._ladder()
        return dataclasses.replace(
            phase, max_in_flight=self._in_flight, max_paused=self._paused,
            degraded=int(after[0] - before[0]), deadline_missed=int(after[1] - before[1]),
        )  # fmt: skip

    @contextlib.contextmanager
    def _sampler(self, every_s: float = 0.1) -> Iterator[None]:
        """Sample in-flight and paused partitions on a thread while the block runs."""
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(every_s):
                with contextlib.suppress(OSError, KeyError, StreamscoreError):  # a missed one
                    text = self.process.metrics()
                    self._in_flight = max(self._in_flight, metric_value(text, IN_FLIGHT))
                    self._paused = max(self._paused, metric_value(text, PAUSED))

        thread = threading.Thread(target=sample, name="bench-sampler", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _ladder(self) -> tuple[float, float]:
        """Degraded scores and missed deadlines counted so far by the process."""
        text = self.process.settled_metrics()

        def count(name: str, labels: dict[str, str] | None = None) -> float:
            try:
                return metric_value(text, name, labels)
            except KeyError:  # a labelled counter shows no sample before its first count
                return 0.0

        return (
            count("streamscore_events_total", {"outcome": "degraded"}),
            count("streamscore_deadline_missed_total"),
        )

    def burst(self, records: Sequence[Record]) -> Phase:
        """Publish as fast as possible while the process runs; watch memory and in-flight."""
        self.monitor.reset()
        self._in_flight = 0.0
        sent = self.publisher.publish(self.topics.events, ((r.key, r.value) for r in records))
        sent_ms = {str(r.event_id): ms for r, ms in zip(records, sent, strict=True)}
        tick = self._sample_in_flight if self.config.batches else None
        out = self.phase("burst", tick, sent_ms, 0)
        return self.result(out, "burst", None, len(records), max_in_flight=self._in_flight)

    def _sample_in_flight(self) -> None:
        with contextlib.suppress(OSError, KeyError, StreamscoreError):  # a missed sample
            value = metric_value(self.process.metrics(), IN_FLIGHT)
            self._in_flight = max(self._in_flight, value)

    def _since_last_phase(self) -> tuple[float | None, dict[str, Percentiles]]:
        """Mean model batch and latency shares since the previous phase (streamscore only)."""
        if not self.config.batches:
            return None, {}
        try:
            text = self.process.settled_metrics()
        except (OSError, StreamscoreError):  # no metrics page: the loss is what gets reported
            return None, {}
        total = metric_value(text, "streamscore_batch_size_sum")
        count = metric_value(text, "streamscore_batch_size_count")
        before_total, before_count = self._batches
        self._batches = (total, count)
        batches = count - before_count
        shares = {}
        for name in (PROCESSING_LATENCY, ARRIVAL_LATENCY):
            buckets = histogram_buckets(text, name)
            shares[name] = bucket_percentiles(buckets, self._histograms.get(name))
            self._histograms[name] = buckets
        return ((total - before_total) / batches if batches else None), shares

    def result(
        self,
        out: PhaseOutput,
        kind: Literal["drain", "load", "burst", "overload"],
        rate: float | None,
        records: int,
        *,
        startup: float | None = None,
        max_in_flight: float | None = None,
        achieved: float | None = None,
        cpu: tuple[float, float] | None = None,
        cpu_per_event: tuple[float | None, float | None] = (None, None),
        number: int = 1,
    ) -> Phase:
        mean_batch, shares = self._since_last_phase()
        return Phase(
            config=self.config.key,
            kind=kind,
            offered_rate=rate,
            records=records,
            scored=out.scored,
            dead=out.dead,
            other=out.other,
            duplicates=out.duplicates,
            missing=out.missing,
            rate=out.rate() if achieved is None else achieved,
            latency=Percentiles.of(out.latencies_ms),
            mean_batch=mean_batch,
            in_worker=shares.get(PROCESSING_LATENCY),
            arrival=shares.get(ARRIVAL_LATENCY),
            peak_rss=self.monitor.peak_bytes(),
            seconds=max(out.last_ms - out.first_ms, 0) / 1000.0,
            startup_s=startup,
            max_in_flight=max_in_flight if self.config.batches else None,
            bench_cpu=None if cpu is None else cpu[0],
            process_cpu=None if cpu is None else cpu[1],
            cpu_us_per_event=cpu_per_event[0],
            broker_cpu_us_per_event=cpu_per_event[1],
            round=number,
        )
