"""deploy/Dockerfile, parsed by dockerfile-parse: what an image reviewer would check."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

from dockerfile_parse import DockerfileParser

from streams.settings import ENV_PREFIX, Settings
from tests.deploy.conftest import DEPLOY, ROOT

DOCKERFILE = DEPLOY / "Dockerfile"


def parsed() -> DockerfileParser:
    parser = DockerfileParser(fileobj=DOCKERFILE.open("rb"))
    return parser


def instructions(name: str) -> list[dict[str, Any]]:
    return [i for i in parsed().structure if i["instruction"] == name]


def stages() -> list[list[dict[str, Any]]]:
    """Instructions per build stage (split at FROM)."""
    out: list[list[dict[str, Any]]] = []
    for item in parsed().structure:
        if item["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(item)
    return out


def build_args() -> dict[str, str]:
    """Default values of the ARGs (global and per stage)."""
    args = {}
    for item in instructions("ARG"):
        name, _, default = item["value"].partition("=")
        args[name] = default
    return args


def test_multi_stage_with_a_pinned_slim_python_base() -> None:
    froms = [i["value"] for i in instructions("FROM")]
    assert len(froms) >= 2, "a build stage and a runtime stage"
    base = build_args()["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    for value in froms:
        image = value.split()[0].replace("${PYTHON_IMAGE}", base)
        assert ":latest" not in image, image
        assert ":" in image, f"{image}: no tag or digest"
    assert froms[-1].split()[-1] == "runtime"
    runtime = stages()[-1]
    copies = [i["value"] for i in runtime if i["instruction"] == "COPY"]
    assert copies == ["--from=build /opt/streamscore /opt/streamscore"], (
        "runtime gets the venv only"
    )


def test_cpu_torch_by_default_and_cuda_by_build_argument() -> None:
    args = build_args()
    assert args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_VERSION"] == "2.13.0"
    runs = " ".join(i["value"] for i in instructions("RUN"))
    assert 'torch==${TORCH_VERSION}"' in runs
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"' in runs
    assert "pip install -c constraints.txt ." in runs


def test_runs_as_a_non_root_user_with_its_data_dir_a_volume() -> None:
    runtime = stages()[-1]
    users = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert int(user) >= 1000
    env = parsed().envs
    assert env["STREAMSCORE_DATA_DIR"] == "/var/lib/streamscore"
    settings = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert {k for k in env if k.startswith(ENV_PREFIX)} <= settings
    volumes = [json.loads(i["value"]) for i in runtime if i["instruction"] == "VOLUME"]
    assert ["/var/lib/streamscore"] in volumes


def test_healthcheck_entrypoint_and_command() -> None:
    (health,) = instructions("HEALTHCHECK")
    options, _, command = health["value"].partition(" CMD ")
    assert "--start-period=" in options
    probe = json.loads(command)  # exec form: no shell needed in the image
    assert probe[:2] == ["python", "-c"]
    assert "/health/live" in probe[2]
    compile(probe[2], "healthcheck", "exec")
    assert json.loads(instructions("ENTRYPOINT")[-1]["value"]) == ["streamscore"]
    assert json.loads(instructions("CMD")[-1]["value"]) == ["worker"]
    assert any(i["value"] == "6066" for i in instructions("EXPOSE"))


def test_copied_sources_exist_and_the_build_context_is_small() -> None:
    build = stages()[0]
    for item in build:
        if item["instruction"] == "COPY" and not item["value"].startswith("--from"):
            *sources, _ = item["value"].split()
            for source in sources:
                assert (ROOT / source).exists(), source
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[1] == "*", "everything is excluded by default"
    allowed = {line.lstrip("!").rstrip("/") for line in ignore if line.startswith("!")}
    # Every package the wheel is built from (the CLI imports the bench harness, the default
    # pipeline and its models live in pipelines/).
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]  # fmt: skip
    assert allowed == {"pyproject.toml", "constraints.txt", "README.md"} | {
        p.rstrip("*") for p in packages
    }
    copied = {i["value"].split()[0] for i in build if i["instruction"] == "COPY"}
    assert {p.rstrip("*") for p in packages} <= copied
