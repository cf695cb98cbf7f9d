"""Adding artifacts to the registry: everything wrong is refused, and leaves no trace."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.artifact import MANIFEST
from models.errors import ArtifactError
from models.registry import Registered, list_models, resolve, resolve_ref
from pipelines.fraud import pipeline as fraud
from pipelines.fraud.artifact import load_artifact, packaged_artifacts_dir
from pipelines.fraud.smoke import SMOKE_ROWS, check_smoke, smoke_features
from streams.pipeline.models import add_model, register_model
from tests.nan_model import nan_artifact


def add_artifact(source: Path, registry: Path) -> str:
    """``models add`` of a fraud model."""
    return add_model(fraud, source, registry)


def register_artifact(source: Path, registry: Path) -> Registered:
    return register_model(fraud, source, registry)


def _copy(source: Path, target: Path, **changes: Any) -> Path:
    """A copy of an artifact with manifest fields changed (``None`` removes one)."""
    shutil.copytree(source, target)
    manifest = json.loads((target / MANIFEST).read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key)
        else:
            manifest[key] = value
    (target / MANIFEST).write_text(json.dumps(manifest))
    return target


@pytest.fixture
def artifact(small_artifact: Path, tmp_path: Path) -> Path:
    """A valid artifact that is not a packaged NAME:VERSION."""
    return _copy(small_artifact, tmp_path / "src", name="fraud-small", version="3")


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return tmp_path / "registry"


def _contents(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden ones included), by relative path."""
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def _traces(directory: Path) -> list[str]:
    """Everything under ``directory``, directories included."""
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def _write_weights(directory: Path, payload: bytes) -> None:
    """Replace the weights with ``payload`` and give the manifest its true checksum."""
    (directory / "model.safetensors").write_bytes(payload)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["sha256"] = hashlib.sha256(payload).hexdigest()
    (directory / MANIFEST).write_text(json.dumps(manifest))


def test_add_copies_a_valid_artifact_as_name_and_version(artifact: Path, registry: Path) -> None:
    assert add_artifact(artifact, registry) == "fraud-small:3"
    installed = registry / "fraud-small" / "3"
    assert _contents(installed) == _contents(artifact)
    assert _traces(registry) == [
        "fraud-small", "fraud-small/3", "fraud-small/3/manifest.json",
        "fraud-small/3/model.safetensors",
    ]  # fmt: skip
    assert resolve("fraud-small", registry) == installed
    assert "fraud-small:3" in list_models(registry)
    assert load_artifact(installed).ref == "fraud-small:3"


def test_only_the_manifest_and_its_weights_are_copied(artifact: Path, registry: Path) -> None:
    (artifact / "notes.txt").write_text("scratch")
    (artifact / "sub").mkdir()
    add_artifact(artifact, registry)
    assert sorted(_contents(registry / "fraud-small" / "3")) == [MANIFEST, "model.safetensors"]


def test_the_same_content_again_is_a_no_op(artifact: Path, registry: Path) -> None:
    first = register_artifact(artifact, registry)
    before = _contents(registry)
    again = register_artifact(artifact, registry)
    assert (first.created, again.created) == (True, False)
    assert again.ref == "fraud-small:3"
    assert _contents(registry) == before


def test_a_version_is_immutable(artifact: Path, registry: Path, tmp_path: Path) -> None:
    add_artifact(artifact, registry)
    before = _contents(registry)
    changed = _copy(artifact, tmp_path / "changed", metrics={"auc": 0.99})
    with pytest.raises(ArtifactError, match="already in the registry with different content"):
        add_artifact(changed, registry)
    retrained = _copy(artifact, tmp_path / "retrained")
    weights = bytearray((retrained / "model.safetensors").read_bytes())
    weights[-1] ^= 0x01  # a different (still finite) last weight
    _write_weights(retrained, bytes(weights))
    with pytest.raises(ArtifactError, match="immutable"):
        add_artifact(retrained, registry)
    assert _contents(registry) == before


def test_a_packaged_version_cannot_be_shadowed(registry: Path, tmp_path: Path) -> None:
    packaged = _copy(packaged_artifacts_dir() / "fraud-mlp" / "1", tmp_path / "copy")
    with pytest.raises(ArtifactError, match="fraud-mlp:1 is a packaged model"):
        add_artifact(packaged, registry)
    assert _traces(registry) == []


def test_a_bad_checksum_is_refused(artifact: Path, registry: Path) -> None:
    weights = bytearray((artifact / "model.safetensors").read_bytes())
    weights[-1] ^= 0x01
    (artifact / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ArtifactError, match=r"sha256 is .* the manifest says"):
        add_artifact(artifact, registry)
    assert _traces(registry) == []


@pytest.mark.parametrize("field", ["name", "version", "weights", "sha256", "input_spec"])
def test_a_missing_manifest_field_is_refused(
    artifact: Path, registry: Path, tmp_path: Path, field: str
) -> None:
    broken = _copy(artifact, tmp_path / "broken", **{field: None})
    with pytest.raises(ArtifactError, match=rf"field '{field}': Field required") as caught:
        add_artifact(broken, registry)
    assert "\n" not in str(caught.value)
    assert _traces(registry) == []


def test_a_directory_without_manifest_is_refused(tmp_path: Path, registry: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"missing; .* is not a model artifact"):
        add_artifact(tmp_path / "empty", registry)
    with pytest.raises(ArtifactError, match="not a directory"):
        add_artifact(tmp_path / "nowhere", registry)
    assert _traces(registry) == []


class _Touch:
    """Unpickling this creates ``path``: proof that a payload ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Path.touch, (str(self.path),))  # type: ignore[return-value]


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_pickle_payload_is_refused_and_never_run(
    artifact: Path, registry: Path, tmp_path: Path, writer: str
) -> None:
    marker = tmp_path / "payload-ran"
    payload_file = tmp_path / "payload.bin"
    if writer == "pickle":
        payload_file.write_bytes(pickle.dumps({"net.0.weight": _Touch(marker)}))
    else:
        torch.save({"net.0.weight": _Touch(marker)}, payload_file)
    # The checksum matches: only refusing to parse anything but safetensors stops it.
    _write_weights(artifact, payload_file.read_bytes())
    # The payload is real: unpickling it does create the marker.
    check = tmp_path / "check.bin"
    check.write_bytes(pickle.dumps(_Touch(tmp_path / "real")))
    pickle.loads(check.read_bytes())
    assert (tmp_path / "real").exists()

    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        add_artifact(artifact, registry)
    assert not marker.exists()
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["format"] = "torch"
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="field 'format'"):
        add_artifact(artifact, registry)
    assert not marker.exists()
    assert _traces(registry) == []


def test_a_spec_naming_an_unknown_feature_is_refused(artifact: Path, registry: Path) -> None:
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["input_spec"]["numeric"][0]["name"] = "favourite_colour"
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(
        ArtifactError,
        match=r"input_spec\.numeric\.0\.name.*unknown numeric feature 'favourite_colour'; "
        "the feature pipeline computes amount_log",
    ):
        add_artifact(artifact, registry)
    assert _traces(registry) == []


def test_non_finite_smoke_scores_are_refused(registry: Path, tmp_path: Path) -> None:
    broken = nan_artifact(tmp_path / "nan", "fraud-nan")
    assert np.isnan(load_artifact(broken).predict(smoke_features())).all()
    with pytest.raises(
        ArtifactError, match=rf"fraud-nan:1: {SMOKE_ROWS} of {SMOKE_ROWS} scores .* not finite"
    ):
        add_artifact(broken, registry)
    assert _traces(registry) == []


def test_the_smoke_batch_is_realistic_and_the_packaged_models_pass_it() -> None:
    raw = smoke_features()
    assert len(raw) == SMOKE_ROWS
    profile_known = ~np.isnan(raw.numeric[:, 3])  # account_age_days_log
    assert 0 < profile_known.sum() < SMOKE_ROWS  # with and without profiles
    for ref in list_models(None):
        if ref.startswith("fraud-"):  # the purchases models: tests/unit/pipeline
            check_smoke(load_artifact(resolve(ref)))


def test_a_failed_move_leaves_no_trace(
    artifact: Path, registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.mkdir()
    (registry / "other").mkdir()

    def refuse(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("models.registry.os.rename", refuse)
    with pytest.raises(OSError, match="No space left"):
        add_artifact(artifact, registry)
    monkeypatch.undo()
    assert _traces(registry) == ["other"]  # no staging folder, no empty fraud-small/
    assert add_artifact(artifact, registry) == "fraud-small:3"


def test_a_source_changed_during_the_copy_is_not_installed(
    artifact: Path, registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import models.registry

    real_copy = shutil.copyfileobj

    def tamper(source: Any, target: Any, *args: Any) -> None:
        real_copy(source, target, *args)
        if target.name.endswith("model.safetensors"):
            target.write(b"\0")  # the copy no longer matches the manifest's checksum

    monkeypatch.setattr(models.registry.shutil, "copyfileobj", tamper)
    with pytest.raises(ArtifactError, match="changed while it was being added"):
        add_artifact(artifact, registry)
    monkeypatch.undo()
    assert _traces(registry) == []


def test_resolve_ref_pins_the_highest_version_and_is_never_a_path(
    artifact: Path, registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_artifact(artifact, registry)
    add_artifact(_copy(artifact, tmp_path / "v10", version="10"), registry)
    assert resolve_ref("fraud-small", registry) == (
        "fraud-small:10",
        registry / "fraud-small" / "10",
    )
    assert resolve_ref(" fraud-small:3 ", registry)[0] == "fraud-small:3"
    assert resolve_ref("fraud-deep", None)[0] == "fraud-deep:1"
    # A directory named like a model in the working directory is not what a reference means.
    monkeypatch.chdir(tmp_path)
    shutil.copytree(artifact, tmp_path / "fraud-lr")
    assert resolve_ref("fraud-lr", registry)[1] == packaged_artifacts_dir() / "fraud-lr" / "1"
    with pytest.raises(ArtifactError, match="not a model reference"):
        resolve_ref(str(artifact), registry)
