"""SASL settings reach the clients, a rejected login is one clear error, and the password
never appears in a log.

The embedded broker (Tansu 0.6.0) authenticates SCRAM only with users stored in
its storage engine, and its memory store cannot get one: `tansu user create`
is refused once `--authentication` is on, and users created before are lost
on the restart that turns it on (docs/operations.md, "Kafka security", has the
commands and their output). So a successful login cannot be tested here; a
rejected one can, and it is what an operator with a wrong secret sees.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.harness import WorkerProcess
from streams.kafka.embedded import broker_binary, free_port
from tests.integration.records import streamscore

PASSWORD = f"pw-{uuid.uuid4().hex}"


@pytest.fixture
def authenticating_broker(tmp_path: Path) -> Iterator[str]:
    """A Tansu broker that requires SASL (SCRAM) from every client."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--authentication"],
        stdout=(tmp_path / "broker.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while "ready in" not in (tmp_path / "broker.log").read_text(errors="replace"):
            assert process.poll() is None, (tmp_path / "broker.log").read_text()
            assert time.monotonic() < deadline, "the broker did not start"
            time.sleep(0.05)
        yield f"kafka://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def sasl_env(broker: str, tmp_path: Path) -> dict[str, str]:
    return {
        "STREAMSCORE_BROKER": broker,
        "STREAMSCORE_DATA_DIR": str(tmp_path / "data"),
        "STREAMSCORE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAMSCORE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "STREAMSCORE_KAFKA_SASL_USERNAME": "streamscore",
        "STREAMSCORE_KAFKA_SASL_PASSWORD": PASSWORD,
        "STREAMSCORE_LOG_LEVEL": "debug",  # the most a log ever says
    }


@pytest.mark.broker
def test_a_rejected_login_stops_the_worker_with_the_reason_and_no_password(
    authenticating_broker: str, tmp_path: Path
) -> None:
    env = sasl_env(authenticating_broker, tmp_path)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    assert worker.process is not None
    assert worker.process.wait(90) == 1
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "rejected the credentials" in log
    assert "SASL SCRAM authentication failed: broker responded with unknown-user" in log
    assert "STREAMSCORE_KAFKA_SASL_PASSWORD" in log  # the message says what to check
    assert PASSWORD not in log

    replay = streamscore(env, "dlq", "replay", "--timeout", "5")
    assert replay.returncode == 1
    (line,) = replay.stderr.strip().splitlines()[-1:]
    assert line.startswith("streamscore: Kafka at 127.0.0.1:")
    assert "rejected the credentials" in line
    assert PASSWORD not in replay.stdout + replay.stderr


def test_a_bad_password_setting_is_never_echoed() -> None:
    env = {
        "STREAMSCORE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMSCORE_KAFKA_SASL_MECHANISM": "MD5",
        "STREAMSCORE_KAFKA_SASL_USERNAME": "svc",
        "STREAMSCORE_KAFKA_SASL_PASSWORD": PASSWORD,
    }
    result = streamscore(env, "dlq", "replay")
    assert result.returncode == 2
    assert "STREAMSCORE_KAFKA_SASL_MECHANISM" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
