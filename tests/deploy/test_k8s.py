"""deploy/k8s: both overlays render with kustomize (kubectl's) and validate against the API."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from functools import cache
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streams.settings import ENV_PREFIX, Settings
from tests.deploy.conftest import DEPLOY

K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.33.0"
CUSTOM_KINDS = {"ServiceMonitor", "ScaledObject", "TriggerAuthentication"}
SETTINGS = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """The overlay as applied: the hydrated manifest (kept identical to kustomize's output)."""
    return tuple(yaml.safe_load_all((K8S / "rendered" / f"{overlay}.yaml").read_text()))


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_hydrated_manifests_are_what_kustomize_renders(overlay: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # the other tests still validate the committed manifests
        pytest.skip("kubectl (with kustomize) is not installed: drift not checked")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert tuple(yaml.safe_load_all(result.stdout)) == render(overlay), (
        f"deploy/k8s/rendered/{overlay}.yaml is stale: run `make k8s-render`"
    )


def by_kind(overlay: str) -> dict[str, dict[str, Any]]:
    objects = {o["kind"]: o for o in render(overlay)}
    assert len(objects) == len(render(overlay)), "one object per kind"
    return objects


def container(overlay: str) -> dict[str, Any]:
    (worker,) = by_kind(overlay)["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    return dict(worker)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_builtin_kinds_are_valid_kubernetes_objects(overlay: str) -> None:
    kinds = set()
    for obj in render(overlay):
        kinds.add(obj["kind"])
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    assert kinds == CUSTOM_KINDS | {
        "ServiceAccount", "ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget",
    }  # fmt: skip


def test_the_validator_rejects_a_misspelt_field() -> None:
    statefulset = copy.deepcopy(by_kind("cpu")["StatefulSet"])
    statefulset["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_configuration_is_real_settings_and_secrets_come_from_a_secret(overlay: str) -> None:
    config = by_kind(overlay)["ConfigMap"]["data"]
    assert set(config) <= SETTINGS, set(config) - SETTINGS
    Settings.model_validate({k.removeprefix(ENV_PREFIX).lower(): v for k, v in config.items()}
                            | {"kafka_sasl_username": "u", "kafka_sasl_password": "p"})  # fmt: skip
    assert not {k for k in config if "PASSWORD" in k or "USERNAME" in k}
    worker = container(overlay)
    assert worker["envFrom"] == [{"configMapRef": {"name": "streamscore"}}]
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in worker["env"]}
    assert secrets == {
        "STREAMSCORE_KAFKA_SASL_USERNAME": {"name": "streamscore-kafka", "key": "username"},
        "STREAMSCORE_KAFKA_SASL_PASSWORD": {"name": "streamscore-kafka", "key": "password"},
    }


def test_statefulset_keeps_state_per_pod_and_probes_the_contract_s_endpoints() -> None:
    objects = by_kind("cpu")
    spec = objects["StatefulSet"]["spec"]
    assert spec["serviceName"] == objects["Service"]["metadata"]["name"]
    assert objects["Service"]["spec"]["clusterIP"] == "None"
    (claim,) = spec["volumeClaimTemplates"]
    worker = container("cpu")
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    config = objects["ConfigMap"]["data"]
    assert mounts[claim["metadata"]["name"]] == config["STREAMSCORE_DATA_DIR"]
    port = {p["name"]: p["containerPort"] for p in worker["ports"]}["http"]
    assert str(port) == config["STREAMSCORE_WEB_PORT"]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert worker["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # SIGTERM drains in-flight events and commits: give it the drain timeout and some.
    assert pod["terminationGracePeriodSeconds"] * 1000 > int(config["STREAMSCORE_DRAIN_TIMEOUT_MS"])
    assert worker["resources"]["requests"]
    assert worker["resources"]["limits"]
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    pod_labels = spec["template"]["metadata"]["labels"]
    for selector in (objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
                     objects["Service"]["spec"]["selector"]):  # fmt: skip
        assert selector.items() <= pod_labels.items()
    monitor = objects["ServiceMonitor"]["spec"]
    assert (
        monitor["selector"]["matchLabels"].items()
        <= objects["Service"]["metadata"]["labels"].items()
    )
    assert monitor["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_keda_scales_on_lag_up_to_the_partition_count(overlay: str) -> None:
    objects = by_kind(overlay)
    config = objects["ConfigMap"]["data"]
    scaled = objects["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "name": objects["StatefulSet"]["metadata"]["name"],
    }  # fmt: skip
    assert scaled["maxReplicaCount"] == int(config["STREAMSCORE_PARTITIONS"])
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == config["STREAMSCORE_APP_ID"]
    assert meta["topic"] == config["STREAMSCORE_EVENTS_TOPIC"]
    host_port = re.sub(r"^kafka://", "", config["STREAMSCORE_BROKER"])
    assert meta["bootstrapServers"] == host_port
    assert int(meta["lagThreshold"]) > 0
    keda_sasl = {
        "PLAIN": "plaintext",
        "SCRAM-SHA-256": "scram_sha256",
        "SCRAM-SHA-512": "scram_sha512",
    }
    assert meta["sasl"] == keda_sasl[config["STREAMSCORE_KAFKA_SASL_MECHANISM"]]
    assert (
        trigger["authenticationRef"]["name"] == objects["TriggerAuthentication"]["metadata"]["name"]
    )
    params = {r["parameter"] for r in objects["TriggerAuthentication"]["spec"]["secretTargetRef"]}
    assert {"username", "password"} <= params


def test_the_gpu_overlay_asks_for_a_gpu_and_uses_cuda() -> None:
    cpu, gpu = container("cpu"), container("gpu")
    assert "nvidia.com/gpu" not in str(cpu["resources"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert by_kind("gpu")["ConfigMap"]["data"]["STREAMSCORE_DEVICE"] == "cuda"
    assert by_kind("cpu")["ConfigMap"]["data"]["STREAMSCORE_DEVICE"] == "cpu"
    assert gpu["image"].endswith("-cuda")
    assert not cpu["image"].endswith("-cuda")
    assert not cpu["image"].endswith(":latest")
    assert ":" in cpu["image"]
    # Everything else of the container is the base's.
    assert {k: v for k, v in gpu.items() if k not in ("resources", "image")} == {
        k: v for k, v in cpu.items() if k not in ("resources", "image")
    }
