"""Settings: the contract's defaults, readable errors, and exit code 2 from the commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.settings import Settings, load_settings

CONTRACT_DEFAULTS = {
    "broker": "kafka://127.0.0.1:9092",
    "app_id": "streamscore",
    "events_topic": "events",
    "features_topic": "features",
    "scores_topic": "scores",
    "dlq_topic": "events.dlq",
    "partitions": 8,
    "max_batch_size": 256,
    "max_wait_ms": 10,
    "max_in_flight": 4096,
    "device": "auto",
    "model": None,
    "web_port": 6066,
    "data_dir": Path("./data"),
    "model_registry": None,
    "control_topic": "streamscore.control",
    "shadow_topic": "scores.shadow",
}


def test_defaults_are_the_contracts() -> None:
    settings = load_settings()
    for name, value in CONTRACT_DEFAULTS.items():
        assert getattr(settings, name) == value, name
    assert settings.registry_dir == Path("./data/registry")
    assert settings.bootstrap_servers == "127.0.0.1:9092"


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_BROKER", "kafka://k1:9093, kafka://k2")
    monkeypatch.setenv("STREAMSCORE_MAX_BATCH_SIZE", "512")
    monkeypatch.setenv("STREAMSCORE_MAX_IN_FLIGHT", "8192")
    monkeypatch.setenv("STREAMSCORE_DEVICE", "cuda:1")
    settings = load_settings()
    assert settings.bootstrap_servers == "k1:9093,k2:9092"
    assert settings.faust_broker == "kafka://k1:9093;kafka://k2:9092"
    assert (settings.max_batch_size, settings.device) == (512, "cuda:1")


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("STREAMSCORE_MAX_BATCH_SIZE", "0", "STREAMSCORE_MAX_BATCH_SIZE"),
        ("STREAMSCORE_MAX_WAIT_MS", "-1", "STREAMSCORE_MAX_WAIT_MS"),
        ("STREAMSCORE_PARTITIONS", "many", "STREAMSCORE_PARTITIONS"),
        ("STREAMSCORE_DEVICE", "gpu", "auto, cpu, cuda or cuda:N"),
        ("STREAMSCORE_BROKER", "http://x:1", "kafka://HOST:PORT"),
        ("STREAMSCORE_EVENTS_TOPIC", "bad topic", "STREAMSCORE_EVENTS_TOPIC"),
        ("STREAMSCORE_WEB_PORT", "70000", "STREAMSCORE_WEB_PORT"),
        ("STREAMSCORE_MAX_IN_FLIGHT", "100", "at least STREAMSCORE_MAX_BATCH_SIZE"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert says in str(raised.value)


def test_sasl_settings_reach_the_client_config_and_the_password_is_never_echoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMSCORE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMSCORE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("STREAMSCORE_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("STREAMSCORE_KAFKA_SASL_PASSWORD", "hunter2")
    settings = load_settings()
    config = settings.kafka_client_config()
    assert config["sasl.password"] == "hunter2"
    assert "hunter2" not in repr(settings)
    monkeypatch.setenv("STREAMSCORE_KAFKA_SASL_MECHANISM", "MD5")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "hunter2" not in str(raised.value)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(Exception, match="frozen"):
        settings.partitions = 3  # type: ignore[misc]


@pytest.mark.parametrize("command", [["worker"], ["demo", "--events", "1"]])
def test_commands_exit_2_with_the_reason_on_a_bad_value(command: list[str]) -> None:
    env = {**os.environ, "STREAMSCORE_MAX_BATCH_SIZE": "zero"}
    result = subprocess.run(
        [sys.executable, "-m", "streams", *command],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "STREAMSCORE_MAX_BATCH_SIZE" in result.stderr
    assert "Traceback" not in result.stderr


def test_security_settings_reach_faust_as_well(monkeypatch: pytest.MonkeyPatch) -> None:
    from faust.auth import SASLCredentials, SSLCredentials
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.settings import faust_credentials

    assert faust_credentials(load_settings()) is None
    monkeypatch.setenv("STREAMSCORE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("STREAMSCORE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("STREAMSCORE_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("STREAMSCORE_KAFKA_SASL_PASSWORD", "pw")
    credentials = faust_credentials(load_settings())
    assert isinstance(credentials, SASLCredentials)
    auth = credentials_to_aiokafka_auth(credentials)
    assert (auth["security_protocol"], auth["sasl_mechanism"]) == (
        "SASL_PLAINTEXT",
        "SCRAM-SHA-256",
    )
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("svc", "pw")
    monkeypatch.setenv("STREAMSCORE_KAFKA_SECURITY_PROTOCOL", "SSL")
    assert isinstance(faust_credentials(load_settings()), SSLCredentials)


def test_execution_defaults_to_plain_fp32_and_buckets_come_with_compile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = load_settings().execution()
    assert (plain.precision, plain.compile, plain.buckets) == ("fp32", "off", ())
    monkeypatch.setenv("STREAMSCORE_COMPILE", "reduce-overhead")
    monkeypatch.setenv("STREAMSCORE_PRECISION", "bf16")
    monkeypatch.setenv("STREAMSCORE_PRECISION_TOLERANCE", "0.02")
    compiled = load_settings().execution()
    assert compiled.buckets == (8, 16, 32, 64, 128, 256)
    assert (compiled.precision, compiled.compile, compiled.tolerance) == (
        "bf16", "reduce-overhead", 0.02,
    )  # fmt: skip
    monkeypatch.setenv("STREAMSCORE_BATCH_BUCKETS", "16, 64,256")
    assert load_settings().execution().buckets == (16, 64, 256)


@pytest.mark.parametrize(
    ("value", "says"),
    [("8,x", "separated by commas"), ("64,8,256", "increasing"), ("8,64", "at least")],
)
def test_bad_batch_buckets_are_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    monkeypatch.setenv("STREAMSCORE_BATCH_BUCKETS", value)
    with pytest.raises(ConfigError, match="STREAMSCORE_BATCH_BUCKETS") as error:
        load_settings()
    assert says in str(error.value)
