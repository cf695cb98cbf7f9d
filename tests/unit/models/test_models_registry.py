"""Resolving what an operator typed to an artifact directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.artifact import DEFAULT_MODEL, MANIFEST
from models.errors import ArtifactError
from models.registry import list_models, parse_ref, resolve, version_key
from pipelines.fraud.artifact import load_artifact, packaged_artifacts_dir

PACKAGED = packaged_artifacts_dir() / "fraud-mlp" / "1"


def _registry(tmp_path: Path, *refs: str) -> Path:
    """A registry whose entries are bare manifests (resolving never reads them)."""
    for ref in refs:
        name, _, version = ref.partition(":")
        (tmp_path / name / version).mkdir(parents=True)
        (tmp_path / name / version / MANIFEST).write_text("{}")
    return tmp_path


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("fraud-mlp", ("fraud-mlp", None)),
        ("fraud-mlp:1", ("fraud-mlp", "1")),
        ("lr2:2025-06-01", ("lr2", "2025-06-01")),
        (" fraud-mlp:1.2.0 ", ("fraud-mlp", "1.2.0")),
    ],
)
def test_parse_ref(ref: str, parsed: tuple[str, str | None]) -> None:
    assert parse_ref(ref) == parsed


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("", "NAME"),
        ("Fraud-MLP", "NAME"),
        ("-fraud", "NAME"),
        ("fraud_mlp", "NAME"),
        ("fraud-mlp:", "VERSION"),
        ("fraud-mlp:../1", "VERSION"),
        ("fraud-mlp:1:2", "VERSION"),
        ("fraud-mlp:.hidden", "VERSION"),
    ],
)
def test_parse_ref_refuses(ref: str, message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        parse_ref(ref)


def test_version_order() -> None:
    versions = ["9", "10", "2", "2025-01-01", "2024-12-31", "abc"]
    assert sorted(versions, key=version_key) == ["2024-12-31", "2025-01-01", "abc", "2", "9", "10"]


def test_none_is_the_packaged_default() -> None:
    assert resolve(None) == PACKAGED
    assert resolve(None, Path("/nonexistent")) == PACKAGED
    assert resolve(DEFAULT_MODEL) == PACKAGED
    assert resolve("fraud-mlp") == PACKAGED


def test_a_directory_path_is_used_as_is(small_artifact: Path, tmp_path: Path) -> None:
    assert resolve(str(small_artifact)) == small_artifact
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match=r"has no manifest\.json"):
        resolve(str(empty))
    with pytest.raises(ArtifactError, match="does not exist"):
        resolve(str(tmp_path / "missing"))


def test_registry_lookup_and_highest_version(tmp_path: Path) -> None:
    registry = _registry(tmp_path, "fraud-mlp:2", "fraud-mlp:10", "fraud-mlp:9", "lite:2025-01-01",
                         "lite:2025-02-01", "lite:beta")  # fmt: skip
    assert resolve("fraud-mlp:2", registry) == registry / "fraud-mlp" / "2"
    assert resolve("fraud-mlp", registry) == registry / "fraud-mlp" / "10"
    assert resolve("lite", registry) == registry / "lite" / "beta"  # strings: "beta" > "2025-..."
    assert resolve("lite:2025-01-01", registry) == registry / "lite" / "2025-01-01"


def test_packaged_artifacts_win_over_the_registry(tmp_path: Path) -> None:
    registry = _registry(tmp_path, "fraud-mlp:1")
    assert resolve("fraud-mlp:1", registry) == PACKAGED


def test_not_found_lists_what_is_available(tmp_path: Path) -> None:
    registry = _registry(tmp_path, "lite:3")
    with pytest.raises(
        ArtifactError,
        match=r"'lite:4' not found.*available: fraud-deep:1, fraud-lr:1, fraud-mlp:1, lite:3",
    ):
        resolve("lite:4", registry)
    with pytest.raises(ArtifactError, match="'other' not found"):
        resolve("other", registry)
    with pytest.raises(ArtifactError, match="'lite:3' not found"):
        resolve("lite:3")  # no registry given: packaged only


def test_list_models(tmp_path: Path) -> None:
    registry = _registry(tmp_path, "fraud-mlp:10", "fraud-mlp:2", "alpha:1", "fraud-mlp:1")
    (registry / "fraud-mlp" / "3").mkdir()  # no manifest: not a model
    (registry / "Bad_Name" / "1").mkdir(parents=True)
    (registry / "Bad_Name" / "1" / MANIFEST).write_text("{}")
    packaged = ["fraud-deep:1", "fraud-lr:1", "fraud-mlp:1", "purchases-gru:1", "purchases-rfm:1"]
    assert list_models(registry) == [
        "alpha:1", "fraud-deep:1", "fraud-lr:1", "fraud-mlp:1", "fraud-mlp:2", "fraud-mlp:10",
        "purchases-gru:1", "purchases-rfm:1",
    ]  # fmt: skip
    assert list_models(None) == packaged  # the product's and its packaged pipelines'
    assert list_models(tmp_path / "missing") == packaged


def test_resolved_registry_artifact_loads(small_artifact: Path, tmp_path: Path) -> None:
    shutil.copytree(small_artifact, tmp_path / "fraud-small" / "7")
    model = load_artifact(resolve("fraud-small", tmp_path))
    assert model.ref == "fraud-mlp:1"  # the manifest's identity, whatever the directory
