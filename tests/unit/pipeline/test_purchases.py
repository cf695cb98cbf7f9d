"""The packaged ``purchases`` pipeline on the real CDNOW log: features, labels, training,
``pipeline check`` with its packaged model, ``models add`` for it."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from models.programs import load_program
from pipelines.purchases import pipeline
from pipelines.purchases.data import DAY, Log, events_jsonl, fetch, read_log
from pipelines.purchases.train import labels, roc_auc, train
from streams.cli import main
from streams.pipeline.offline import run_lines

ROOT = Path(__file__).resolve().parents[3]
CACHE = ROOT / ".cache" / "datasets"
PACKAGED = ROOT / "pipelines" / "purchases" / "artifacts"


@pytest.fixture(scope="module")
def log() -> Log:
    return read_log(fetch(CACHE))


def test_the_log_is_the_published_one(log: Log) -> None:
    assert len(log) == 69_659
    assert len(np.unique(log.customer)) == 23_570
    assert round(float(log.dollars.sum()), 2) == 2_500_315.63


def test_each_purchase_sees_the_customers_earlier_purchases(log: Log) -> None:
    rows = np.flatnonzero(np.isin(log.customer, [3, 4]))  # the file's order is by customer
    rows = rows[np.argsort(log.ts[rows], kind="stable")]
    chunks = list(run_lines(pipeline, events_jsonl(log, rows), chunk=3))  # state across chunks
    aggregates = np.concatenate([c.featurized.inputs["aggregates"] for c in chunks])
    sequence = np.concatenate([c.featurized.inputs["sequence"] for c in chunks])
    mine = np.flatnonzero(log.customer[rows] == 3)
    # Customer 3 buys on 1997-01-02 (2 CDs, $20.76), 1997-03-30 (2, $20.76), 1997-04-02, ...
    second, third = mine[1], mine[2]
    assert np.expm1(aggregates[second, 0]) == pytest.approx(1.0)  # one purchase before
    assert np.expm1(aggregates[second, 3]) == pytest.approx(87.0, abs=1e-4)  # days since it
    assert np.expm1(aggregates[third, 1]) == pytest.approx(20.76, abs=1e-4)  # mean dollars
    assert aggregates[mine[0], 4] == 1.0
    assert aggregates[second, 4] == 0.0
    last = np.expm1(sequence[third, -1])  # the most recent purchase, in the last slot
    assert last[:3] == pytest.approx([20.76, 2.0, 3.0], abs=1e-4)
    assert sequence[third, :, 3].tolist() == [0.0] * 8 + [1.0, 1.0]  # two real slots


def test_labels_count_a_later_day_within_90_days_of_the_same_customer() -> None:
    day = np.array([0, 0, 90, 200, 10, 95], dtype=np.float64) * DAY
    log = Log(
        customer=np.array([1, 1, 1, 1, 2, 3]),
        ts=day,
        cds=np.ones(6, dtype=np.int64),
        dollars=np.ones(6),
    )
    got = labels(log, np.arange(6))
    # Day 0 twice: the same day does not count, day 90 does; 90 -> 200 is too late;
    # customers 2 and 3 never buy again (3's purchase is not 2's).
    assert got.tolist() == [True, True, False, False, False, False]


def test_roc_auc_is_the_share_of_ordered_pairs_ties_counting_half() -> None:
    rng = np.random.default_rng(3)
    label = rng.integers(0, 2, 300).astype(np.float32)
    score = rng.integers(0, 20, 300).astype(np.float32)  # many ties
    pos, neg = score[label == 1], score[label == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    assert roc_auc(label, score) == pytest.approx(float(np.mean(pairs)), abs=1e-12)


def test_training_is_reproducible_and_reports_the_packaged_figures(tmp_path: Path) -> None:
    first = train(tmp_path / "a", seed=7, cache=CACHE)
    second = train(tmp_path / "b", seed=7, cache=CACHE)
    assert first == second
    for name in ("purchases-gru/1/model.pt2", "purchases-rfm/1/model.safetensors"):
        digests = {hashlib.sha256((tmp_path / run / name).read_bytes()).digest() for run in "ab"}
        assert len(digests) == 1
    packaged = json.loads((PACKAGED / "purchases-gru/1/manifest.json").read_text())["metrics"]
    assert first["train_purchases"] == packaged["train_purchases"] == 49_086
    assert first["eval_purchases"] == packaged["eval_purchases"] == 6_851
    for model in ("gru", "no_sequence", "rfm_logistic"):
        assert first[f"roc_auc_{model}"] == pytest.approx(packaged[f"roc_auc_{model}"], abs=0.005)
        assert first[f"roc_auc_{model}"] > 0.75


def test_check_scores_a_slice_of_the_log_with_the_packaged_model(log: Log, tmp_path: Path) -> None:
    events = tmp_path / "slice.jsonl"
    events.write_bytes(b"\n".join(events_jsonl(log)[:2000]) + b"\n")
    runner = CliRunner()
    result = runner.invoke(main, ["pipeline", "check", "--pipeline", "purchases", str(events)])
    assert result.exit_code == 0, result.stderr
    scores = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(scores) == 2000
    assert {s["model"] for s in scores} == {"purchases-gru"}
    assert all(0.0 <= s["score"] <= 1.0 for s in scores)
    features = tmp_path / "features.npz"
    result = runner.invoke(
        main, ["pipeline", "features", "--pipeline", "purchases", str(events), "-o", str(features)]
    )
    assert result.exit_code == 0, result.stderr
    model = load_program(
        PACKAGED / "purchases-gru" / "1",
        pipeline="purchases",
        inputs=pipeline.describe_inputs(),
        architectures=pipeline.architectures,
    )
    data = np.load(features)
    want = model.predict({"sequence": data["sequence"], "aggregates": data["aggregates"]})
    assert [s["score"] for s in scores] == pytest.approx(want.tolist(), abs=1e-6)


def test_models_add_checks_the_model_against_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMSCORE_MODEL_REGISTRY", str(tmp_path / "registry"))
    copy = tmp_path / "rfm-2"
    shutil.copytree(PACKAGED / "purchases-rfm" / "1", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["version"] = "2"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    runner = CliRunner()
    refused = runner.invoke(main, ["models", "add", str(copy)])  # the default pipeline: fraud
    assert refused.exit_code == 2
    assert "made for pipeline 'purchases', not 'fraud'" in refused.stderr
    added = runner.invoke(main, ["models", "add", "--pipeline", "purchases", str(copy)])
    assert added.exit_code == 0, added.stderr
    assert added.stdout.strip() == "added purchases-rfm:2"
    listed = runner.invoke(main, ["models", "list"]).stdout.split()
    assert {"purchases-gru:1", "purchases-rfm:1", "purchases-rfm:2"} <= set(listed)
    manifest["inputs"]["aggregates"]["shape"] = [None, 8]
    manifest["version"] = "3"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    mismatch = runner.invoke(main, ["models", "add", "--pipeline", "purchases", str(copy)])
    assert mismatch.exit_code == 2
    assert "input 'aggregates' is float32 [None, 8]" in mismatch.stderr
    assert not (tmp_path / "registry" / "purchases-rfm" / "3").exists()


def test_a_fraud_manifest_may_name_its_pipeline(tmp_path: Path) -> None:
    from pipelines.fraud.artifact import load_artifact, packaged_artifacts_dir

    copy = tmp_path / "fraud-lr"
    shutil.copytree(packaged_artifacts_dir() / "fraud-lr" / "1", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "pipeline": "fraud"}))
    assert load_artifact(copy).manifest.pipeline == "fraud"
    (copy / "manifest.json").write_text(json.dumps({**manifest, "pipeline": "purchases"}))
    with pytest.raises(Exception, match="made for pipeline 'purchases'"):
        load_artifact(copy)


def test_the_pipeline_probe_runs_every_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.pipeline_probe import probe

    monkeypatch.setenv("STREAMSCORE_DATA_DIR", str(CACHE.parent))
    results = probe("purchases", 600, batch=128, repeats=1, threads=1)
    assert results["events"] == 600
    for stage in ("validate_us", "features_us", "model_batched_us", "model_single_us"):
        assert 0 < results[stage] < 1e6  # microseconds per event, measured (not a target)
