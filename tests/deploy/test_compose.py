"""docker-compose.yml: valid against the Compose Specification schema, and consistent."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from streams.settings import ENV_PREFIX, Settings
from tests.deploy.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
SETTINGS = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves the << merges
    return data


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    return subprocess.run(
        [*command, str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_compose_specification_schema_accepts_it() -> None:
    result = check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["worker-1"]["depends_on"]["topics"]["condition"] = "service_ready"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = check_jsonschema(path)
    assert result.returncode == 1
    assert "service_ready" in result.stdout + result.stderr


def test_every_streamscore_variable_is_a_real_setting() -> None:
    text = COMPOSE.read_text()
    used = set(re.findall(r"\b(STREAMSCORE_[A-Z_]+)\b", text))
    assert used, "the compose file configures the workers"
    assert used <= SETTINGS, used - SETTINGS


def test_two_workers_in_one_group_each_with_its_own_state() -> None:
    services = compose()["services"]
    workers = {name: s for name, s in services.items() if s.get("command") is None
               and s.get("image", "").startswith("streamscore")}  # fmt: skip
    assert sorted(workers) == ["worker-1", "worker-2"]
    groups = {s["environment"]["STREAMSCORE_APP_ID"] for s in workers.values()}
    assert len(groups) == 1
    volumes = [s["volumes"][0] for s in workers.values()]
    assert len(set(volumes)) == 2
    assert all(v.endswith(":/var/lib/streamscore") for v in volumes)
    for worker in workers.values():
        assert worker["environment"]["STREAMSCORE_BROKER"] == "kafka://kafka:9092"
        assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert worker["build"]["dockerfile"] == "deploy/Dockerfile"


def test_kafka_is_one_kraft_node_pinned_and_health_checked() -> None:
    services = compose()["services"]
    kafka = services["kafka"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", kafka["image"])
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "CMD-SHELL" in kafka["healthcheck"]["test"]
    for name, service in services.items():
        image = service.get("image", "")
        assert ":" in image, f"{name}: image without a tag"
        assert not image.endswith(":latest"), name


def test_the_initialiser_creates_the_contract_s_topics() -> None:
    services = compose()["services"]
    init = services["topics"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init["environment"]["PARTITIONS"] == "${STREAMSCORE_PARTITIONS:-8}"
    assert services["worker-1"]["environment"]["STREAMSCORE_PARTITIONS"] == (
        "${STREAMSCORE_PARTITIONS:-8}"
    )
    script = init["command"][0]
    assert "for topic in events features scores events.dlq scores.shadow" in script
    assert '--partitions "$$PARTITIONS"' in script
    assert "--topic streamscore.control --partitions 1 --config cleanup.policy=compact" in script


def test_the_demo_producer_uses_a_real_command() -> None:
    from streams.cli import main

    producer = compose()["services"]["producer"]
    command = producer["command"]
    assert command[0] in main.commands
    context = main.commands[command[0]].make_context(command[0], list(command[1:]))
    assert context.params["n_events"] == 0  # until stopped


def test_prometheus_scrapes_the_workers_with_the_rules() -> None:
    services = compose()["services"]
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    assert mounts["./deploy/prometheus/rules.yml"] == "/etc/prometheus/rules.yml"
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    for target in targets:
        host, port = target.split(":")
        assert services[host]["environment"]["STREAMSCORE_WEB_PORT"] == port
