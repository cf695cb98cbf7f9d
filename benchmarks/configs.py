"""The configurations measured, and how each one's process is started.

Each runs as its own process on its own topics and consumer group, reading
the same pre-loaded input from the same broker:

- **a** streamscore as shipped: ``streamscore worker`` with its defaults.
- **b** streamscore with ``STREAMSCORE_MAX_BATCH_SIZE=1``: one model call per event.
- **c** a naive Faust app (:mod:`benchmarks.naive_app`): per-event agent,
  Faust tables, one model call and one ``await send()`` per event.
- **d** Quix Streams consuming and producing each record as bytes
  (:mod:`benchmarks.quix_peer`): no model; the framework's floor.
- **e** a bare confluent-kafka loop doing the same (:mod:`benchmarks.bare_peer`):
  no framework; the floor of the client and the broker.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from benchmarks import quix_peer
from benchmarks.preload import Topics
from streams.harness import WorkerProcess


class Kind(Enum):
    STREAMSCORE = "streamscore"
    NAIVE_FAUST = "naive-faust"
    QUIX = "quix"
    BARE = "bare"


@dataclass(frozen=True, slots=True)
class Config:
    key: str
    name: str
    kind: Kind
    summary: str
    #: What the latency of this configuration spans, for the report.
    latency: str
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def batches(self) -> bool:
        """Whether its ``/metrics`` has ``streamscore_batch_size``."""
        return self.kind is Kind.STREAMSCORE

    @property
    def scores(self) -> bool:
        """Whether it scores events and dead-letters malformed ones (the peers without a
        model pass every record on)."""
        return self.kind in (Kind.STREAMSCORE, Kind.NAIVE_FAUST)

    @property
    def reads_features(self) -> bool:
        return self.scores


_STREAMSCORE_LATENCY = (
    "event record timestamp (set by the bench's producer) to score record timestamp "
    "(set by the worker's producer when it produces the score, before the broker acknowledges it)"
)

CONFIGS: dict[str, Config] = {
    "a": Config(
        "a", "streamscore", Kind.STREAMSCORE,
        "streamscore as shipped (micro-batches up to 256, 10 ms max wait, 4096 in flight)",
        _STREAMSCORE_LATENCY,
    ),
    "b": Config(
        "b", "streamscore batch=1", Kind.STREAMSCORE,
        "streamscore with STREAMSCORE_MAX_BATCH_SIZE=1: one model call per event "
        "(the bulk path is unchanged; 4096 in flight)",
        _STREAMSCORE_LATENCY,
        {"STREAMSCORE_MAX_BATCH_SIZE": "1"},
    ),
    "c": Config(
        "c", "naive Faust", Kind.NAIVE_FAUST,
        "a Faust agent per event: validate, Table lookups, featurize, model call, "
        "await send (benchmarks/naive_app.py)",
        "event record timestamp to score record timestamp (set by Faust's aiokafka producer "
        "when the score enters its send buffer)",
    ),
    "d": Config(
        "d", "Quix bare (no model)", Kind.QUIX,
        "Quix Streams consume -> produce of the raw bytes, no model "
        "(benchmarks/quix_peer.py)",
        "event record timestamp to output record timestamp (set to the time Quix processed "
        "the record, just before it produces it)",
    ),
    "e": Config(
        "e", "bare confluent-kafka (no framework)", Kind.BARE,
        "a hand-written confluent-kafka loop: consume -> produce of the raw bytes, commit "
        "every second after a flush; no framework, no model (benchmarks/bare_peer.py)",
        "event record timestamp to output record timestamp (set when the loop produces it): "
        "the broker's hop and the client's fetch, nothing else",
    ),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Launch:
    """What every configuration's process needs to know."""

    bootstrap: str
    partitions: int
    workdir: Path
    naive_fetch_wait_ms: int
    quix_python: Path
    broker_pid: int | None = None  # the embedded broker's process, to charge its CPU
    pipeline: str = "fraud"  # what streamscore serves (the naive Faust app knows fraud only)


class CommandProcess(WorkerProcess):
    """A process other than ``streamscore worker``, managed like one (log, SIGTERM, SIGKILL)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        super().__init__(env, log_path)
        self.argv = list(argv)

    def start(self) -> CommandProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return int(self.process.pid)


def start(config: Config, topics: Topics, launch: Launch) -> CommandProcess:
    """Start the configuration's process (it starts consuming the backlog at once)."""
    log = launch.workdir / f"{topics.prefix}.log"
    if config.kind is Kind.QUIX:
        argv = [
            str(launch.quix_python), str(Path(quix_peer.__file__)),
            "--broker", launch.bootstrap, "--input", topics.events, "--output", topics.scores,
            "--group", topics.group, "--state-dir", str(launch.workdir / f"{topics.prefix}-state"),
        ]  # fmt: skip
        return CommandProcess(argv, {}, log).start()
    if config.kind is Kind.BARE:
        argv = [
            sys.executable, "-m", "benchmarks.bare_peer", "--broker", launch.bootstrap,
            "--input", topics.events, "--output", topics.scores, "--group", topics.group,
        ]  # fmt: skip
        return CommandProcess(argv, {}, log).start()
    env = {
        "STREAMSCORE_BROKER": f"kafka://{launch.bootstrap}",
        "STREAMSCORE_APP_ID": topics.group,
        "STREAMSCORE_EVENTS_TOPIC": topics.events,
        "STREAMSCORE_FEATURES_TOPIC": topics.features,
        "STREAMSCORE_SCORES_TOPIC": topics.scores,
        "STREAMSCORE_DLQ_TOPIC": topics.dlq,
        "STREAMSCORE_SHADOW_TOPIC": f"{topics.prefix}-shadow",
        "STREAMSCORE_CONTROL_TOPIC": f"{topics.prefix}-control",
        "STREAMSCORE_PARTITIONS": str(launch.partitions),
        "STREAMSCORE_DATA_DIR": str(launch.workdir / f"{topics.prefix}-data"),
        "STREAMSCORE_PIPELINE": launch.pipeline,
        **config.env,
    }
    if config.kind is Kind.STREAMSCORE:
        argv = [sys.executable, "-m", "streams", "worker"]
    else:
        env["STREAMSCORE_FETCH_MAX_WAIT_MS"] = str(launch.naive_fetch_wait_ms)
        argv = [sys.executable, "-m", "faust", "-A", "benchmarks.naive_app",
                "worker", "-l", "info"]  # fmt: skip
    return CommandProcess(argv, env, log).start()
