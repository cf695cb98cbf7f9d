"""deploy/grafana: the dashboard parses, covers the issue's panels, and queries only real series."""

from __future__ import annotations

import yaml

from streams.metrics import Metrics
from tests.deploy.conftest import DEPLOY, ROOT
from tests.deploy.promql import (
    dashboard,
    dashboard_exprs,
    metric_names,
    panels,
    unknown_names,
)


def test_dashboard_shows_what_operators_need() -> None:
    data = dashboard()
    assert data["uid"] == "streamscore"
    exprs = dashboard_exprs(data)
    used = set().union(*map(metric_names, exprs))
    for name in (
        "streamscore_events_total",
        "streamscore_end_to_end_latency_seconds_bucket",
        "streamscore_processing_latency_seconds_bucket",
        "streamscore_arrival_latency_seconds_bucket",
        "streamscore_batch_size_sum",
        "streamscore_batch_wait_seconds_bucket",
        "streamscore_model_latency_seconds_bucket",
        "streamscore_in_flight",
        "streamscore_paused_partitions",
        "streamscore_dlq_total",
        "streamscore_consumer_lag",
    ):
        assert name in used, name
    # Per worker: the instance variable filters the queries, and some panels split by it.
    variables = {v["name"] for v in data["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    assert any("by (instance" in e for e in exprs)
    ids = [p["id"] for p in panels(data)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(data):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_every_queried_series_is_exported_recorded_or_announced() -> None:
    """Against the worker's own metric definitions (a live worker: tests/integration)."""
    declared = []  # labelled series without children are not exposed: declare every family
    for family in Metrics.create().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        for suffix in suffixes.get(family.type, [""]):
            declared.append(f"{family.name}{suffix} 0")
    assert unknown_names("\n".join(declared)) == {}


def test_compose_provisions_the_dashboard_and_the_data_source() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./deploy/grafana/streamscore.json"] == "/etc/grafana/dashboards/streamscore.json"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/streamscore.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    source = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
