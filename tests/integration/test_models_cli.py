"""`streamscore models add|list`, run as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from models.artifact import MANIFEST
from tests.integration.artifacts import renamed

COMMAND = [sys.executable, "-m", "streams", "models"]


def _run(registry: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    env["STREAMSCORE_MODEL_REGISTRY"] = str(registry)
    return subprocess.run(
        [*COMMAND, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_add_then_list_then_add_again(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    before = _run(registry, "list")
    assert before.returncode == 0, before.stderr
    packaged = ["fraud-deep:1", "fraud-lr:1", "fraud-mlp:1", "purchases-gru:1", "purchases-rfm:1"]
    assert before.stdout.splitlines() == packaged

    artifact = renamed(tmp_path / "src", "fraud-deep", "2")
    added = _run(registry, "add", str(artifact))
    assert (added.returncode, added.stdout, added.stderr) == (0, "added fraud-deep:2\n", "")
    listed = _run(registry, "list")
    assert listed.stdout.splitlines() == [
        "fraud-deep:1", "fraud-deep:2", "fraud-lr:1", "fraud-mlp:1", "purchases-gru:1",
        "purchases-rfm:1",
    ]  # fmt: skip

    again = _run(registry, "add", str(artifact))
    assert (again.returncode, again.stdout) == (0, "added fraud-deep:2\n")
    assert "already in the registry with the same content; nothing changed" in again.stderr


def test_a_changed_version_is_refused_with_one_line(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    artifact = renamed(tmp_path / "src", "lite", "1", source="fraud-lr/1")
    assert _run(registry, "add", str(artifact)).returncode == 0
    installed = (registry / "lite" / "1" / MANIFEST).read_bytes()
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["metrics"]["auc"] = 0.99
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    result = _run(registry, "add", str(artifact))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"streamscore: cannot add {artifact}: lite:1 is already in the registry with different "
        "content; versions are immutable: give the artifact a new version\n"
    )
    assert (registry / "lite" / "1" / MANIFEST).read_bytes() == installed


def test_a_packaged_version_or_a_bad_artifact_is_refused(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    packaged = renamed(tmp_path / "copy", "fraud-mlp", "1", source="fraud-mlp/1")
    result = _run(registry, "add", str(packaged))
    assert result.returncode == 1
    assert "fraud-mlp:1 is a packaged model and cannot be replaced" in result.stderr
    broken = renamed(tmp_path / "broken", "fraud-deep", "3")
    (broken / "model.safetensors").write_bytes(b"\0" * 64)
    result = _run(registry, "add", str(broken))
    assert result.returncode == 1
    assert result.stderr.startswith(f"streamscore: cannot add {broken}: ")
    assert "sha256 is" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not registry.exists() or list(registry.iterdir()) == []


def test_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = _run(tmp_path / "registry", "add", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr == (
        f"streamscore: {tmp_path / 'nowhere'} does not exist; give the directory of a model "
        "artifact\n"
    )
    assert _run(tmp_path / "registry", "add").returncode == 2  # no DIR at all
