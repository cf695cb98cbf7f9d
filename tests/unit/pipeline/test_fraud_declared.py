"""The packaged ``fraud`` pipeline through the commands every pipeline has: ``pipeline
check`` scores as its model does on what training computes, ``models add`` vets its
format, ``train`` passes its options and refuses options another trainer lacks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from models.artifact import MANIFEST
from models.registry import resolve
from pipelines.fraud.artifact import load_artifact, packaged_artifacts_dir
from pipelines.fraud.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, RawFeatures
from pipelines.fraud.preprocess import Preprocessor, fit_spec
from pipelines.fraud.synthetic import SyntheticWorld
from pipelines.fraud.train import build_features
from streams.cli import main


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_check_scores_fraud_events_as_the_packaged_model_does(tmp_path: Path) -> None:
    events = [e.event for e in SyntheticWorld(3, n_entities=50).events(400)]
    lines = [orjson.dumps(e) for e in events]
    lines.insert(7, b'{"event_id": "x", "entity_id": "a", "ts": 1.0, "amount": -2}')
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    code, out, err = run("pipeline", "check", "--pipeline", "fraud", str(path))
    assert code == 1  # the one bad line
    (error,) = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert (error["line"], error["stage"]) == (8, "validate")
    scores = [json.loads(line) for line in out.splitlines()]
    assert [s["event_id"] for s in scores] == [e["event_id"] for e in events]
    assert {(s["model"], s["model_version"]) for s in scores} == {("fraud-mlp", "1")}
    # The model on what training computes (no profiles: a file of events has none).
    expected = load_artifact(resolve("fraud-mlp:1")).predict(build_features(events, {}))
    np.testing.assert_allclose([s["score"] for s in scores], expected, atol=1e-6)


def test_models_add_vets_a_fraud_model_in_its_own_format(tmp_path: Path) -> None:
    source = tmp_path / "fraud-mlp-9"
    shutil.copytree(packaged_artifacts_dir() / "fraud-mlp" / "1", source)
    manifest = json.loads((source / MANIFEST).read_text())
    (source / MANIFEST).write_text(json.dumps({**manifest, "version": "9"}))
    registry = tmp_path / "registry"
    env = {"STREAMSCORE_MODEL_REGISTRY": str(registry)}
    result = CliRunner(env=env).invoke(main, ["models", "add", str(source)])
    assert result.exit_code == 0, result.output
    assert "added fraud-mlp:9" in result.stdout
    # For a pipeline whose models are programs, the same directory is no model at all.
    result = CliRunner(env=env).invoke(
        main, ["models", "add", "--pipeline", "purchases", str(source)]
    )
    assert result.exit_code == 2
    assert "names no 'pipeline' it was made for" in result.stderr
    assert sorted(p.name for p in registry.iterdir() if not p.name.startswith(".")) == ["fraud-mlp"]


def test_train_refuses_an_option_the_pipelines_trainer_does_not_take(tmp_path: Path) -> None:
    code, _, err = run(
        "train", "--pipeline", "purchases", "--architecture", "deep", "--output", str(tmp_path)
    )
    assert code == 2
    assert "pipeline 'purchases''s trainer takes no --architecture" in err
    code, _, err = run("train", "--architecture", "huge", "--output", str(tmp_path / "x"))
    assert code == 2
    assert "architecture 'huge': the fraud pipeline trains mlp, logistic, deep" in err


def test_produce_refuses_a_pipeline_without_synthetic_traffic() -> None:
    code, _, err = run("produce", "--pipeline", "purchases")
    assert code == 2
    assert "declares no synthetic traffic" in err


codes_of = st.one_of(
    st.sampled_from(["web", "pos", "app", "DE", "US", "EUR", "USD", "GBP", "?", "", "WEB"]),
    st.text(max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(codes_of, codes_of, codes_of), min_size=1, max_size=30))
def test_one_hot_slots_are_the_vocabularys_positions_whatever_the_value(
    rows: list[tuple[str, str, str]],
) -> None:
    """Categorical values go through integer codes; each lands in the slot of its
    vocabulary entry, and any value outside the vocabulary in the last slot."""
    n = len(rows)
    train = RawFeatures(
        np.zeros((60, len(NUMERIC_FEATURES)), np.float32),
        (["web", "pos"] * 30, ["DE", "US", "FR"] * 20, ["EUR", "USD", "GBP", "CHF"] * 15),
    )
    spec = fit_spec(train, min_count=1)
    columns = tuple(list(c) for c in zip(*rows, strict=True))
    out = Preprocessor(spec).transform(
        RawFeatures(np.zeros((n, len(NUMERIC_FEATURES)), np.float32), columns)
    )
    start = out.shape[1] - sum(len(c.vocabulary) + 1 for c in spec.categorical)
    for cat, values in zip(spec.categorical, columns, strict=True):
        assert cat.name in CATEGORICAL_FEATURES
        width = len(cat.vocabulary) + 1
        block = out[:, start : start + width]
        expected = [
            cat.vocabulary.index(v) if v in cat.vocabulary else len(cat.vocabulary) for v in values
        ]
        assert block.argmax(axis=1).tolist() == expected
        assert (block.sum(axis=1) == 1).all()
        start += width


@pytest.mark.parametrize("width", [2, 3])
def test_letter_codes_are_distinct_for_distinct_codes(width: int) -> None:
    from itertools import product
    from string import ascii_uppercase

    from pipelines.fraud.features import letter_codes

    values = ["".join(p) for p in product(ascii_uppercase, repeat=width)]
    codes = letter_codes(values, width)
    assert sorted(codes.tolist()) == list(range(26**width))


class _TinyFraud(torch.nn.Module):
    """A user's own fraud model on the pipeline's inputs (it imputes the NaN itself)."""

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        amount = torch.nan_to_num(numeric[:, 0], nan=0.0)
        return torch.sigmoid(0.3 * amount - 2.0 + (categorical[:, 0] == 1).float())


def test_a_torch_export_program_serves_fraud_beside_its_own_format(tmp_path: Path) -> None:
    """With fraud declared, a model trained on `pipeline features --pipeline fraud` and
    exported with torch.export is added and scores as any pipeline's program does."""
    from models.programs import save_program
    from pipelines.fraud import pipeline as fraud
    from pipelines.fraud.features import encode_categorical

    artifact = save_program(
        tmp_path / "tiny", name="fraud-tiny", version="1", pipeline="fraud",
        inputs=fraud.describe_inputs(), model=_TinyFraud(),
        example=(torch.zeros(4, len(NUMERIC_FEATURES)), torch.zeros(4, 3, dtype=torch.int64)),
    )  # fmt: skip
    registry = tmp_path / "registry"
    env = {"STREAMSCORE_MODEL_REGISTRY": str(registry)}
    added = CliRunner(env=env).invoke(main, ["models", "add", "--pipeline", "fraud", str(artifact)])
    assert added.exit_code == 0, added.output
    assert "added fraud-tiny:1" in added.stdout

    events = [e.event for e in SyntheticWorld(8, n_entities=30).events(200)]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    result = CliRunner(env=env).invoke(
        main, ["pipeline", "check", "--pipeline", "fraud", "--model", "fraud-tiny:1", str(path)]
    )
    assert result.exit_code == 0, result.output
    scores = [json.loads(line) for line in result.stdout.splitlines()]
    assert {s["model"] for s in scores} == {"fraud-tiny"}
    raw = build_features(events, {})
    expected = _TinyFraud()(
        torch.from_numpy(raw.numeric), torch.from_numpy(encode_categorical(*raw.categorical))
    ).numpy()
    np.testing.assert_allclose([s["score"] for s in scores], expected, atol=1e-6)
