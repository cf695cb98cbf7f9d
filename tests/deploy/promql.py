"""Metric names out of PromQL expressions, and the names the rules and dashboard use.

Good enough for our own expressions: quoted strings are removed (label values),
then every identifier that names a streamscore series or recording rule is kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

from tests.deploy.conftest import DEPLOY

RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "streamscore.json"

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """streamscore series and recording rules that ``expr`` reads."""
    bare = _QUOTED.sub('""', expr)
    return {name for name in _IDENT.findall(bare) if "streamscore" in name}


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def recording_rules() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in data["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(data: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in panels(data) for t in p.get("targets", [])]
    for variable in data["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def sample_names(exposition: str) -> set[str]:
    """Every sample name on a /metrics page (``_bucket``, ``_total`` ... included)."""
    return {
        line.split("{", 1)[0].split(" ", 1)[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }


def unknown_names(exposition: str) -> dict[str, set[str]]:
    """Names the rules and the dashboard read that are neither exported nor recorded."""
    known = sample_names(exposition) | recording_rules()
    used = {"rules.yml": set().union(*(metric_names(r["expr"]) for r in rules()))}
    used["streamscore.json"] = set().union(*map(metric_names, dashboard_exprs(dashboard())))
    return {source: names - known for source, names in used.items() if names - known}
