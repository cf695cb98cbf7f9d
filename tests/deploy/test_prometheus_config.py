"""deploy/prometheus: promtool checks the config and the rules, and runs the rules' unit tests."""

from __future__ import annotations

import subprocess

import yaml

from tests.deploy.conftest import DEPLOY
from tests.deploy.promql import recording_rules, rules

PROMETHEUS = DEPLOY / "prometheus"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(PROMETHEUS / "rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_checks_the_compose_scrape_config(promtool: str) -> None:
    result = run(promtool, "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["worker-1:6066", "worker-2:6066"]


def test_alerts_fire_when_they_should_and_not_before(promtool: str) -> None:
    """rules.test.yml feeds synthetic series and expects each alert at the right time."""
    result = run(promtool, "test", "rules", str(PROMETHEUS / "rules.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_issue_s_recording_rules_and_alerts_exist() -> None:
    recorded = recording_rules()
    for name in (
        "outcome:streamscore_events:rate1m",
        "streamscore:end_to_end_latency_seconds:p50_1m",
        "streamscore:end_to_end_latency_seconds:p99_1m",
        "streamscore:batch_size:mean1m",
    ):
        assert name in recorded
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts >= {
        "StreamscoreConsumerLagGrowing",
        "StreamscoreDLQRateHigh",
        "StreamscoreLatencyP99High",
        "StreamscoreBreakerOpen",
        "StreamscoreDegradedShareHigh",
        "StreamscoreWorkerNotReady",
        "StreamscorePartitionsPaused",
    }
    tested = (PROMETHEUS / "rules.test.yml").read_text()
    untested = {a for a in alerts if f"alertname: {a}" not in tested}
    assert untested <= {"StreamscoreWorkerDown", "StreamscoreDeadlinesMissed"}, untested
