"""``streamscore pipeline features|check`` on a pipeline defined only in the tests
(``tests/pipelines/visits.py``), with models exported here in both formats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from click.testing import CliRunner

from models.programs import load_program, save_program
from streams.cli import main
from tests.pipelines.visits import WINDOW, VisitNet, pipeline

REF = "tests.pipelines.visits:pipeline"


def visit(user: str, n: int, ts: float, seconds: float, pages: int = 1, **extra: object) -> bytes:
    event = {
        "user": user, "visit_id": f"v{n}", "ts": ts, "seconds": seconds, "pages": pages,
        "device": "web", **extra,
    }  # fmt: skip
    return orjson.dumps(event)


LINES = [
    visit("ann", 1, 100.0, 30.0),
    visit("bob", 2, 101.0, 5.0, 2),
    b'{"user": "ann", "visit_id": "v3", "ts": 102.0, "seconds": "7", "pages": 1, "device": "web"}',
    visit("ann", 4, 160.0, 90.0, 3, unknown_field=[1, 2]),
    b"not json",
    visit("ann", 5, 170.0, 0.0, 1),
]


@pytest.fixture
def events(tmp_path: Path) -> Path:
    path = tmp_path / "visits.jsonl"
    path.write_bytes(b"\n".join(LINES) + b"\n")
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_features_are_the_state_just_before_each_event(events: Path, tmp_path: Path) -> None:
    out = tmp_path / "features.npz"
    code, _, err = run("pipeline", "features", "--pipeline", REF, str(events), "--output", str(out))
    assert code == 1  # two lines do not validate
    errors = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [(e["line"], e["stage"]) for e in errors] == [(3, "validate"), (5, "decode")]
    assert "seconds" in errors[0]["error"]
    data = np.load(out)
    assert data["line"].tolist() == [1, 2, 4, 6]
    aggregates, recent = data["aggregates"], data["recent"]
    assert aggregates.dtype == np.float32
    assert recent.shape == (4, WINDOW, 2)
    # ann's visits before each: 0, 1 (v1; v3 was refused), 2 (v1, v4); bob's: 0.
    assert np.expm1(aggregates[:, 0]).round(4).tolist() == [0.0, 0.0, 1.0, 2.0]
    assert np.expm1(aggregates[:, 1]).round(4).tolist() == [0.0, 0.0, 30.0, 60.0]  # mean seconds
    assert np.expm1(aggregates[:, 3]).round(3).tolist() == [0.0, 0.0, 60.0, 10.0]  # gap
    # ann's last visit, v5, sees v1 then v4 at the end of its window (seconds, pages).
    assert np.expm1(recent[3]).round(3).tolist() == [[0, 0], [0, 0], [30, 1], [90, 3]]


def export(tmp_path: Path, fmt: str, **overrides: object) -> tuple[Path, VisitNet]:
    torch.manual_seed(0)
    net = VisitNet(hidden=5).eval()
    example = (torch.zeros(2, 6), torch.zeros(2, WINDOW, 2))
    directory = tmp_path / f"visit-net-{fmt}"
    arguments: dict[str, object] = {
        "name": "visit-net", "version": "1", "pipeline": "visits",
        "inputs": pipeline.describe_inputs(), "model": net,
    }  # fmt: skip
    if fmt == "torch.export":
        arguments["example"] = example
    else:
        arguments["architecture"] = ("VisitNet", {"hidden": 5})
    arguments.update(overrides)
    save_program(directory, **arguments)  # type: ignore[arg-type]
    return directory, net


@pytest.mark.parametrize("fmt", ["torch.export", "safetensors"])
def test_check_scores_each_valid_line_as_the_model_does(
    fmt: str, events: Path, tmp_path: Path
) -> None:
    model, net = export(tmp_path, fmt)
    features = tmp_path / "features.npz"
    run("pipeline", "features", "--pipeline", REF, str(events), "--output", str(features))
    code, out, err = run("pipeline", "check", "--pipeline", REF, "--model", str(model), str(events))
    assert code == 1
    scores = [json.loads(line) for line in out.splitlines()]
    assert [s["event_id"] for s in scores] == ["v1", "v2", "v4", "v5"]
    assert {s["model"] for s in scores} == {"visit-net"}
    assert not any(s["degraded"] for s in scores)
    assert [s["event_ts"] for s in scores] == [100.0, 101.0, 160.0, 170.0]
    data = np.load(features)
    with torch.no_grad():
        want = net(torch.from_numpy(data["aggregates"]), torch.from_numpy(data["recent"]))
    assert [s["score"] for s in scores] == pytest.approx(want.tolist(), abs=1e-6)
    assert all("source" not in s for s in scores)
    assert [json.loads(line)["line"] for line in err.splitlines()] == [3, 5]


def test_check_exits_0_when_every_line_is_scored(tmp_path: Path) -> None:
    model, _ = export(tmp_path, "torch.export")
    path = tmp_path / "good.jsonl"
    path.write_bytes(b"\n".join([visit("c", i, float(i), 1.0) for i in range(3)]))
    code, out, _ = run("pipeline", "check", "--pipeline", REF, "--model", str(model), str(path))
    assert code == 0
    assert len(out.splitlines()) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pipeline": "fraud"}, "was made for pipeline 'fraud', not 'visits'"),
        (
            {
                "inputs": {
                    "aggregates": {"dtype": "float32", "shape": [None, 5]},
                    "recent": {"dtype": "float32", "shape": [None, WINDOW, 2]},
                }
            },
            "input 'aggregates' is float32 [None, 5], the pipeline's features produce float32",
        ),
        (
            {"inputs": {"aggregates": {"dtype": "float32", "shape": [None, 6]}}},
            "missing ['recent']",
        ),
    ],
)
def test_a_model_that_does_not_fit_the_pipeline_is_refused(
    change: dict[str, object], message: str, events: Path, tmp_path: Path
) -> None:
    model, _ = export(tmp_path, "torch.export")
    manifest = json.loads((model / "manifest.json").read_text())
    manifest.update(change)
    (model / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = run("pipeline", "check", "--pipeline", REF, "--model", str(model), str(events))
    assert code == 2
    assert out == ""
    assert message in err


def test_unsafe_or_corrupt_model_files_are_refused_before_loading(tmp_path: Path) -> None:
    model, _ = export(tmp_path, "torch.export")
    inputs = pipeline.describe_inputs()
    weights = model / "model.pt2"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(Exception, match="sha256 is"):
        load_program(model, pipeline="visits", inputs=inputs, architectures={})
    # An archive whose sample inputs hold an arbitrary object (unpickled by torch.export.load).
    model, _ = export(tmp_path / "again", "torch.export")
    weights = model / "model.pt2"
    import hashlib
    import io
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(weights.read_bytes()))
    rebuilt = io.BytesIO()
    with zipfile.ZipFile(rebuilt, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            if item.endswith(".pt"):
                buffer = io.BytesIO()
                torch.save({"hook": math.factorial}, buffer)  # a callable: not weights
                data = buffer.getvalue()
            target.writestr(item, data)
    weights.write_bytes(rebuilt.getvalue())
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(rebuilt.getvalue()).hexdigest()
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="holds more than tensors; refused"):
        load_program(model, pipeline="visits", inputs=inputs, architectures={})


def test_a_safetensors_model_must_name_a_declared_architecture(tmp_path: Path) -> None:
    model, _ = export(tmp_path, "safetensors", architecture=("Elsewhere", {}))
    with pytest.raises(Exception, match="architecture 'Elsewhere' is not one the pipeline"):
        load_program(
            model, pipeline="visits", inputs=pipeline.describe_inputs(),
            architectures=pipeline.architectures,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nosuch", "unknown pipeline 'nosuch'"),
        ("no_such_module:pipeline", "cannot import 'no_such_module'"),
        ("tests.pipelines.visits:nothing", "has no attribute 'nothing'"),
        ("tests.pipelines.visits:features", "not a streams.pipeline.Pipeline"),
        ("tests.pipelines.visits", "unknown pipeline"),
    ],
)
def test_a_pipeline_that_cannot_be_loaded_exits_2_with_the_reason(
    ref: str, message: str, events: Path
) -> None:
    code, out, err = run("pipeline", "check", "--pipeline", ref, str(events))
    assert code == 2
    assert out == ""
    assert message in err


def test_the_configured_pipeline_is_used_without_the_option(
    events: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMSCORE_PIPELINE", REF)
    out = tmp_path / "f.npz"
    code, _, _ = run("pipeline", "features", str(events), "--output", str(out))
    assert code == 1
    assert np.load(out)["line"].tolist() == [1, 2, 4, 6]


def rules(model: str, **where: object) -> str:
    """``STREAMSCORE_ROUTING_RULES`` with one rule."""
    return json.dumps([{"model": model, "where": where}])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STREAMSCORE_PIPELINE": REF}, "pipeline 'visits' names no default model"),
        (
            {"STREAMSCORE_PIPELINE": "purchases", "STREAMSCORE_MODEL": "fraud-mlp:1"},
            "model fraud-mlp:1 cannot serve pipeline 'purchases'",
        ),
        (
            {"STREAMSCORE_PIPELINE": "purchases", "STREAMSCORE_MODEL": "purchases-rfm:1",
             "STREAMSCORE_ROUTING_RULES": rules("purchases-gru:1", amount={"gte": 100})},
            "STREAMSCORE_ROUTING_RULES[0]: 'amount' is not a field of pipeline 'purchases'",
        ),
        (
            {"STREAMSCORE_ROUTING_RULES": rules("fraud-mlp:1", channel="kiosk")},
            "STREAMSCORE_ROUTING_RULES[0]: 'channel' can never be 'kiosk'",
        ),
        (
            {"STREAMSCORE_ROUTING_RULES": rules("fraud-mlp:1", merchant={"gt": 1})},
            "STREAMSCORE_ROUTING_RULES[0]: 'merchant' is not a number; it cannot have bounds",
        ),
        ({"STREAMSCORE_PIPELINE": "nosuch"}, "unknown pipeline 'nosuch'"),
    ],
)  # fmt: skip
def test_a_worker_refuses_a_pipeline_it_cannot_serve_before_starting(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = run("worker")
    assert code == 2
    assert message in err


def test_the_worker_takes_the_pipeline_as_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMSCORE_PIPELINE", raising=False)
    code, _, err = run("worker", "--pipeline", "nosuch")
    assert code == 2
    assert "unknown pipeline 'nosuch'" in err
