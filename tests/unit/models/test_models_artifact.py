"""Artifacts: a faithful round trip, and a refusal with ArtifactError for every kind of damage."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from models.artifact import DEFAULT_MODEL, MANIFEST
from models.errors import ArtifactError, ModelError
from models.registry import resolve
from pipelines.fraud.artifact import (
    WEIGHTS,
    LoadedModel,
    load_artifact,
    packaged_artifacts_dir,
    save_artifact,
)
from pipelines.fraud.features import RawFeatures
from pipelines.fraud.model import FraudMLP
from pipelines.fraud.preprocess import Preprocessor, fit_spec
from pipelines.fraud.synthetic import SyntheticWorld
from pipelines.fraud.train import auc, build_features


def _labeled(seed: int, n: int, n_entities: int = 300) -> tuple[RawFeatures, np.ndarray]:
    world = SyntheticWorld(seed, n_entities=n_entities)
    events = world.events(n)
    raw = build_features([e.event for e in events], world.feature_table())
    return raw, np.array([e.is_fraud for e in events])


def test_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    raw, _ = _labeled(1, 500)
    spec = fit_spec(raw)
    torch.manual_seed(0)
    model = FraudMLP(spec.width, hidden=(16, 8)).eval()
    with torch.inference_mode():
        expected = torch.sigmoid(model(torch.from_numpy(Preprocessor(spec).transform(raw))))
    path = save_artifact(
        tmp_path / "a", name="test-model", version="3", model=model, spec=spec, metrics={"x": 1}
    )
    loaded = load_artifact(path)
    assert (loaded.name, loaded.version, loaded.ref) == ("test-model", "3", "test-model:3")
    assert loaded.device == torch.device("cpu")
    assert not loaded.module.training
    scores = loaded.predict(raw)
    assert scores.dtype == np.float32
    assert scores.shape == (500,)
    np.testing.assert_array_equal(scores, expected.numpy())
    assert loaded.predict(raw.take(0, 0)).shape == (0,)
    x = loaded.prepare(raw.take(0, 5))
    assert x.dtype == torch.float32
    assert x.shape == (5, spec.width)
    with torch.inference_mode():
        probabilities = loaded.predict_tensor(x)
    assert probabilities.shape == (5,)
    assert bool(((probabilities >= 0) & (probabilities <= 1)).all())


def test_manifest_is_stable_text(small_artifact: Path, tmp_path: Path) -> None:
    text = (small_artifact / MANIFEST).read_text()
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"
    assert data["format"] == "safetensors"
    assert data["architecture"] == {"kind": "mlp", "hidden": [64, 32]}
    assert data["sha256"] == hashlib.sha256((small_artifact / WEIGHTS).read_bytes()).hexdigest()
    loaded = load_artifact(small_artifact)
    again = save_artifact(
        tmp_path / "again",
        name=loaded.name,
        version=loaded.version,
        model=loaded.module,
        spec=loaded.manifest.input_spec,
        metrics=dict(loaded.manifest.metrics),
    )
    assert (again / WEIGHTS).read_bytes() == (small_artifact / WEIGHTS).read_bytes()
    assert (again / MANIFEST).read_text() == text


def _damaged(source: Path, target: Path, edit: Callable[[dict[str, Any]], object]) -> Path:
    shutil.copytree(source, target)
    manifest = json.loads((target / MANIFEST).read_text())
    edit(manifest)
    (target / MANIFEST).write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("sha256"), "'sha256'.*required"),
        (lambda m: m.pop("input_spec"), "'input_spec'.*required"),
        (lambda m: m.update(name="Fraud_MLP"), "'name'"),
        (lambda m: m.update(version=""), "'version'"),
        (lambda m: m.update(version="../1"), "'version'"),
        (lambda m: m.update(weights="../model.safetensors"), "'weights'.*plain file name"),
        (lambda m: m.update(weights="/etc/passwd"), "'weights'"),
        (lambda m: m.update(format="pickle"), "'format'"),
        (lambda m: m.update(sha256="0" * 64), "sha256 is .* the manifest says"),
        (lambda m: m.update(surprise=True), "'surprise'"),
        (lambda m: m["architecture"].update(kind="transformer"), "'architecture.kind'"),
        (lambda m: m["architecture"].update(hidden=[64, 16]), "'net.2.weight' has shape"),
        (lambda m: m["architecture"].update(hidden=[64]), "do not match the architecture"),
        (lambda m: m["input_spec"]["numeric"].pop(), "'net.0.weight' has shape"),
        (lambda m: m["input_spec"]["numeric"][0].update(name="x"), "unknown numeric feature"),
    ],
)
def test_damaged_manifest_is_refused(
    small_artifact: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], object], message: str
) -> None:
    path = _damaged(small_artifact, tmp_path / "damaged", edit)
    with pytest.raises(ArtifactError, match=message) as caught:
        load_artifact(path)
    assert "\n" not in str(caught.value)


def test_missing_or_unreadable_pieces_are_refused(small_artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(small_artifact, broken)
    (broken / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="not JSON"):
        load_artifact(broken)
    no_weights = tmp_path / "no-weights"
    shutil.copytree(small_artifact, no_weights)
    (no_weights / WEIGHTS).unlink()
    with pytest.raises(ArtifactError, match="cannot read the weights"):
        load_artifact(no_weights)


def test_tampered_weights_fail_the_checksum(small_artifact: Path, tmp_path: Path) -> None:
    path = tmp_path / "tampered"
    shutil.copytree(small_artifact, path)
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-1] ^= 0x01
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(path)


def _write_weights(path: Path, payload: bytes) -> None:
    """Install ``payload`` as the weights, with a manifest checksum that matches it."""
    (path / WEIGHTS).write_bytes(payload)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["sha256"] = hashlib.sha256(payload).hexdigest()
    (path / MANIFEST).write_text(json.dumps(manifest))


class _Trap:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_weights_are_refused_without_running_them(
    small_artifact: Path, tmp_path: Path, writer: str
) -> None:
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(_Trap(armed)))  # the payload really does run code
    assert armed.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "evil"
    shutil.copytree(small_artifact, path)
    if writer == "pickle":
        payload = pickle.dumps({"net.0.weight": _Trap(marker)})
    else:
        torch.save({"net.0.weight": _Trap(marker)}, tmp_path / "evil.pt")
        payload = (tmp_path / "evil.pt").read_bytes()
    _write_weights(path, payload)
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        load_artifact(path)
    assert not marker.exists()


def _tensors(small_artifact: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_artifact(small_artifact).module.state_dict().items()}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.update({"net.4.bias": torch.zeros(2)}), "'net.4.bias' has shape"),
        (lambda t: t.update({"extra": torch.zeros(1)}), "unexpected \\['extra'\\]"),
        (lambda t: t.pop("net.0.bias"), "missing \\['net.0.bias'\\]"),
        (lambda t: t.update({"net.4.bias": torch.zeros(1, dtype=torch.float64)}), "float64"),
        (lambda t: t.update({"net.4.bias": torch.tensor([float("nan")])}), "NaN"),
    ],
)
def test_weights_not_matching_the_architecture_are_refused(
    small_artifact: Path,
    tmp_path: Path,
    edit: Callable[[dict[str, torch.Tensor]], object],
    message: str,
) -> None:
    tensors = _tensors(small_artifact)
    edit(tensors)
    path = tmp_path / "mismatch"
    shutil.copytree(small_artifact, path)
    save_file(tensors, str(tmp_path / "w.safetensors"))
    _write_weights(path, (tmp_path / "w.safetensors").read_bytes())
    with pytest.raises(ArtifactError, match=message):
        load_artifact(path)


def test_unusable_device_is_a_model_error(small_artifact: Path) -> None:
    with pytest.raises(ModelError, match="device"):
        load_artifact(small_artifact, device="no-such-device")


def test_save_refuses_a_model_that_does_not_fit_the_spec(tmp_path: Path) -> None:
    raw, _ = _labeled(1, 100)
    spec = fit_spec(raw)
    with pytest.raises(ValueError, match="inputs"):
        save_artifact(tmp_path, name="x", version="1", model=FraudMLP(3), spec=spec, metrics={})


def test_packaged_default_loads_and_is_good() -> None:
    path = resolve(None)
    assert path == packaged_artifacts_dir() / "fraud-mlp" / "1"
    model = load_artifact(path)
    assert isinstance(model, LoadedModel)
    assert model.ref == DEFAULT_MODEL
    assert float(model.manifest.metrics["auc"]) > 0.9
    raw, y = _labeled(2024, 20_000, n_entities=2_000)  # a world it never saw
    assert auc(y, model.predict(raw)) > 0.9
