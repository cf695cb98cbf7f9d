"""The operator commands, run as an operator would run them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from models.artifact import packaged_artifacts_dir

COMMAND = [sys.executable, "-m", "streams"]


def test_help_lists_the_commands() -> None:
    result = subprocess.run([*COMMAND, "--help"], capture_output=True, text=True, check=True)
    for command in ("broker", "worker", "demo", "train"):
        assert command in result.stdout


def test_broker_prints_its_address_serves_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [*COMMAND, "broker", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("bootstrap=127.0.0.1:"), line
        port = int(line.rpartition(":")[2])
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), timeout=2),
        ):
            pass
    finally:
        process.kill()


def test_broker_on_a_taken_port_fails_with_a_reason() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*COMMAND, "broker", "--port", str(port)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert "could not start" in result.stderr


def test_train_regenerates_the_packaged_model_bit_for_bit(tmp_path: Path) -> None:
    out = tmp_path / "fraud-mlp-1"
    result = subprocess.run(
        [*COMMAND, "train", "--version", "1", "--seed", "7", "--output", str(out)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert "AUC 0.9" in result.stdout
    packaged = json.loads(
        (packaged_artifacts_dir() / "fraud-mlp" / "1" / "manifest.json").read_text()
    )
    trained = json.loads((out / "manifest.json").read_text())
    assert trained["sha256"] == packaged["sha256"]
    assert trained["input_spec"] == packaged["input_spec"]
    assert trained["metrics"]["auc"] > 0.9
