"""The integration tier: a real broker for the session, real workers per test.

``broker`` starts the embedded broker once on a free port. Each test gets a
:class:`Deployment` with its own topic names and consumer group, so tests
share the broker without seeing each other's records.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from pipelines.fraud.features import StoredHistory
from streams.harness import OutputReader, WorkerProcess
from streams.kafka.embedded import EmbeddedBroker

PARTITIONS = 4


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    embedded = EmbeddedBroker(log_path=log)
    embedded.start()
    yield embedded
    embedded.stop()


@dataclass
class Published:
    """A record we produced and where it landed."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    partition: int = -1
    offset: int = -1
    timestamp: int = -1


@dataclass
class Deployment:
    """One isolated set of topics and one consumer group on the shared broker."""

    bootstrap: str
    tmp: Path
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def topics(self) -> dict[str, str]:
        return {
            "events": f"events-{self.suffix}",
            "features": f"features-{self.suffix}",
            "scores": f"scores-{self.suffix}",
            "dlq": f"dlq-{self.suffix}",
            "shadow": f"shadow-{self.suffix}",
            "control": f"control-{self.suffix}",
        }

    @property
    def app_id(self) -> str:
        return f"streamscore-{self.suffix}"

    def env(self, data_dir: Path, **extra: str) -> dict[str, str]:
        return {
            "STREAMSCORE_BROKER": f"kafka://{self.bootstrap}",
            "STREAMSCORE_APP_ID": self.app_id,
            "STREAMSCORE_EVENTS_TOPIC": self.topics["events"],
            "STREAMSCORE_FEATURES_TOPIC": self.topics["features"],
            "STREAMSCORE_SCORES_TOPIC": self.topics["scores"],
            "STREAMSCORE_DLQ_TOPIC": self.topics["dlq"],
            "STREAMSCORE_SHADOW_TOPIC": self.topics["shadow"],
            "STREAMSCORE_CONTROL_TOPIC": self.topics["control"],
            "STREAMSCORE_MODEL_REGISTRY": str(self.registry),
            "STREAMSCORE_PARTITIONS": str(PARTITIONS),
            "STREAMSCORE_DATA_DIR": str(data_dir),
            "STREAMSCORE_LOG_LEVEL": "info",
            "STREAMSCORE_COMMIT_INTERVAL_MS": "200",
            **extra,
        }

    @property
    def registry(self) -> Path:
        """The model registry the workers of this deployment share."""
        return self.tmp / "registry"

    def worker(self, name: str = "w1", data_dir: Path | None = None, **extra: str) -> WorkerProcess:
        data = data_dir or self.tmp / f"data-{name}"
        process = WorkerProcess(self.env(data, **extra), self.tmp / f"{name}.log")
        self.workers.append(process)
        return process.start()

    def producer(self) -> Producer:
        return Producer(
            {"bootstrap.servers": self.bootstrap, "linger.ms": 2, "partitioner": "murmur2_random"}
        )

    def publish(
        self, topic: str, records: Sequence[Published], producer: Producer | None = None
    ) -> list[Published]:
        """Produce in order and fill in where each record landed."""
        producer = producer or self.producer()

        def landed(record: Published) -> object:
            def callback(error: KafkaError | None, message: Message) -> None:
                assert error is None, error
                record.partition = message.partition()
                record.offset = message.offset()
                record.timestamp = message.timestamp()[1]

            return callback

        for record in records:
            producer.produce(
                self.topics[topic], key=record.key, value=record.value, headers=record.headers,
                on_delivery=landed(record),
            )  # fmt: skip
            producer.poll(0)
        producer.flush()
        return list(records)

    def reader(self, isolation: str = "read_committed") -> OutputReader:
        return OutputReader(
            self.bootstrap, self.topics["scores"], self.topics["dlq"], PARTITIONS, isolation
        )

    def changelog(self, table: str = "history") -> dict[str, bytes]:
        """The latest value per key of a table, read back from its changelog."""
        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
             "enable.partition.eof": True}
        )  # fmt: skip
        topic = f"{self.app_id}-{table}-changelog"
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        latest: dict[str, bytes] = {}
        at_end: set[int] = set()
        deadline = time.monotonic() + 30
        while len(at_end) < PARTITIONS and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition())
                    continue
                latest[message.key().decode()] = message.value()
        consumer.close()
        return latest

    def history(self) -> dict[str, int]:
        """Events counted in each entity's online history, read back from the changelog."""
        return {e: StoredHistory.unpack(v).count for e, v in self.changelog().items()}

    def stop_all(self) -> None:
        for process in self.workers:
            if process.returncode is None:
                process.kill()


@pytest.fixture
def deployment(
    broker: EmbeddedBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    deployed = Deployment(broker.bootstrap, tmp_path)
    yield deployed
    deployed.stop_all()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for worker in deployed.workers:
            text = worker.log_path.read_text(errors="replace") if worker.log_path.exists() else ""
            print(f"\n----- {worker.log_path.name} (last 6000 chars) -----\n{text[-6000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


class PacedPublisher:
    """Publishes about 2,000 records a second from a thread until stopped.

    For tests where the stream must keep flowing through what they do to the
    workers: whenever it has sent every record it has, it asks ``more`` for the
    next ones, so the stream never runs dry while a test waits for a worker to
    score again, however slowly the machine runs.
    """

    def __init__(self, deployment: Deployment, more: Callable[[], Sequence[Published]]) -> None:
        self._sent: list[Published] = []
        self._more = more
        self._deployment = deployment
        self._enough = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    @property
    def published(self) -> int:
        """How many have been published so far."""
        return len(self._sent)

    def _run(self) -> None:
        producer = self._deployment.producer()
        while True:
            records = self._more()
            for start in range(0, len(records), 100):
                chunk = records[start : start + 100]
                self._deployment.publish("events", chunk, producer)
                self._sent.extend(chunk)
                if self._enough.wait(0.05):
                    return

    def stop(self) -> list[Published]:
        """Stop publishing; the records published."""
        self._enough.set()
        self._thread.join()
        return list(self._sent)


def event_record(
    event: dict[str, object], headers: list[tuple[str, bytes]] | None = None
) -> Published:
    return Published(str(event["entity_id"]).encode(), orjson.dumps(event), headers)


def kcat(*args: str, stdin: bytes | None = None, timeout: float = 30.0) -> bytes:
    """Run Debian's kcat against the embedded broker.

    Debian's kcat links librdkafka 2.0.2, whose ApiVersions request the
    embedded broker rejects; it is pointed at the newer librdkafka that the
    confluent-kafka wheel ships (same ABI, soname librdkafka.so.1).
    """
    binary = shutil.which("kcat")
    assert binary is not None, "kcat is missing: `make test` installs it (apt-get install kcat)"
    env = dict(os.environ)
    link_dir, libs = _librdkafka_dirs()
    env["LD_LIBRARY_PATH"] = f"{link_dir}:{libs}"
    result = subprocess.run(
        [binary, *args], env=env, input=stdin, capture_output=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def _librdkafka_dirs() -> tuple[Path, Path]:
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    bundled = next(libs.glob("librdkafka-*.so.1"))
    link_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"streamscore-librdkafka-{os.getuid()}"
    link_dir.mkdir(exist_ok=True)
    link = link_dir / "librdkafka.so.1"
    if not link.exists():
        with contextlib.suppress(FileExistsError):  # another test process made it meanwhile
            link.symlink_to(bundled)
    return link_dir, libs
