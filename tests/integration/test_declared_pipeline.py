"""A pipeline declared only in a test file (``tests/pipelines/visits.py``), with a model
exported here, served by real workers: its own dead letters, per-key order, its state
counted once through a SIGKILL, and the same scores as ``pipeline check``."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
import torch
from click.testing import CliRunner

from models.programs import save_program
from schemas import deadletter
from streams.cli import main
from streams.harness import Output
from streams.pipeline import Pipeline
from tests.integration.conftest import Deployment, Published
from tests.pipelines.visits import WINDOW, VisitNet, pipeline

REF = "tests.pipelines.visits:pipeline"


def export(directory: Path, name: str = "visit-net", seed: int = 3) -> Path:
    """A visits model as a torch.export program, as a user would export theirs."""
    torch.manual_seed(seed)
    net = VisitNet(hidden=6).eval()
    save_program(
        directory, name=name, version="1", pipeline="visits",
        inputs=pipeline.describe_inputs(), model=net,
        example=(torch.zeros(2, 6), torch.zeros(2, WINDOW, 2)),
    )  # fmt: skip
    return directory


def visits(n: int, users: int, seed: int) -> list[dict[str, object]]:
    """Visits of ``users`` users, each user's in time order."""
    rng = random.Random(seed)
    clock = dict.fromkeys(range(users), 1_700_000_000.0)
    out = []
    for i in range(n):
        user = rng.randrange(users)
        clock[user] += rng.uniform(1, 3_600)
        out.append(
            {"user": f"u{user}", "visit_id": f"v{seed}-{i}", "ts": clock[user],
             "seconds": round(rng.expovariate(1 / 60), 3), "pages": rng.randint(1, 9),
             "device": rng.choice(["web", "app"])}
        )  # fmt: skip
    return out


def record(visit: dict[str, object]) -> Published:
    return Published(str(visit["user"]).encode(), orjson.dumps(visit), None)


def serve(deployment: Deployment, model: Path, name: str = "w1", **extra: str) -> None:
    deployment.worker(
        name, STREAMSCORE_PIPELINE=REF, STREAMSCORE_MODEL=str(model), **extra
    ).wait_ready()


def stage_of(message: object) -> bytes:
    headers = dict(message.headers() or [])  # type: ignore[attr-defined]
    return headers[deadletter.STAGE]


def score_once(
    deployment: Deployment,
    records: list[Published],
    ids: set[str],
    bad: list[tuple[bytes | None, bytes | None, bytes]],
) -> Output:
    """Publish ``records`` with the ``bad`` ones (key, value, expected stage) spread among
    them; the output once every event is scored and every bad one dead-lettered, as
    checked here: each event scored once, each bad one in its stage."""
    records = list(records)
    for n, (key, value, _) in enumerate(bad, 1):
        records.insert(n * len(records) // (len(bad) + 1), Published(key, value, None))
    deployment.publish("events", records)
    reader = deployment.reader()
    out = reader.until(lambda o: o.scored_ids() >= ids and len(o.dead) >= len(bad), 120)
    reader.close()
    assert out.scored_ids() == ids
    assert len(out.scores) == len(ids)  # one outcome per event
    assert sorted(stage_of(m) for m in out.dead) == sorted(stage for *_, stage in bad)
    return out


@pytest.mark.broker
def test_a_declared_pipeline_is_scored_by_a_worker_as_pipeline_check_scores_it(
    deployment: Deployment, tmp_path: Path
) -> None:
    model = export(tmp_path / "visit-net")
    good = visits(1_500, users=40, seed=1)
    bad = [
        (b"u1", b"not json", b"decode"),
        (
            b"u1",
            b'{"user": "u1", "visit_id": "x1", "ts": 1.0, "seconds": "7", "pages": 1, '
            b'"device": "web"}',
            b"validate",
        ),
        (b"u2", orjson.dumps({**good[0], "user": "u2", "pages": 0}), b"validate"),
        (b"someone-else", orjson.dumps({**good[1], "visit_id": "x2"}), b"validate"),
        (None, orjson.dumps({**good[2], "visit_id": "x3"}), b"validate"),
        (b"u3", None, b"decode"),
    ]
    # Visits from the app with many pages go to a second model, by a rule on the
    # pipeline's own fields; the model is added to the registry as an operator adds one.
    wide = export(tmp_path / "visit-wide", "visit-wide", seed=4)
    added = CliRunner().invoke(
        main, ["models", "add", "--pipeline", REF, str(wide)],
        env={"STREAMSCORE_MODEL_REGISTRY": str(deployment.registry)},
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    rule = {"model": "visit-wide:1", "where": {"device": "app", "pages": {"gte": 5}}}
    serve(deployment, model, STREAMSCORE_ROUTING_RULES=orjson.dumps([rule]).decode())
    ids = {str(v["visit_id"]) for v in good}
    out = score_once(deployment, [record(v) for v in good], ids, bad)

    def key_value(kv: tuple[bytes | None, bytes | None]) -> tuple[bytes, bytes]:
        return kv[0] or b"", kv[1] or b""

    dead = sorted(((m.key(), m.value()) for m in out.dead), key=key_value)
    assert dead == sorted(((k, v) for k, v, _ in bad), key=key_value)  # byte-exact
    assert out.first_scores_in_order()

    # The worker's scores are pipeline check's for the same events: same validation,
    # same state walk, same features, same model, whatever the batches were.
    lines = b"\n".join(orjson.dumps(v) for v in good) + b"\n"
    expected = {}
    for served in (model, wide):
        checked = CliRunner().invoke(
            main, ["pipeline", "check", "--pipeline", REF, "--model", str(served), "-"], input=lines
        )
        assert checked.exit_code == 0, checked.output
        expected[served.name] = {
            s["event_id"]: s for s in map(orjson.loads, checked.stdout.splitlines())
        }
    by_id = {v["visit_id"]: v for v in good}
    routed = Counter()
    for message, score in out.scores:
        visit = by_id[score["event_id"]]
        assert message.key() == str(visit["user"]).encode()
        assert (score["entity_id"], score["event_ts"]) == (visit["user"], visit["ts"])
        name = "visit-wide" if visit["device"] == "app" and visit["pages"] >= 5 else "visit-net"  # type: ignore[operator]
        routed[name] += 1
        assert (score["model"], score["model_version"], score["route"]) == (name, "1", "primary")
        assert score["degraded"] is False
        assert score["score"] == pytest.approx(expected[name][score["event_id"]]["score"], abs=1e-6)
    assert min(routed.values()) > 100, routed  # both models scored a share


def state_counts(deployment: Deployment, declared: Pipeline = pipeline) -> dict[str, int]:
    """Events counted in each entity's state, read back from the state changelog."""
    latest = deployment.changelog()
    records, undecodable = declared.layout.decode(list(latest.values()))
    assert not undecodable.any()
    return dict(zip(latest, records["seen"].tolist(), strict=True))


@pytest.mark.broker
def test_redelivery_after_a_sigkill_counts_no_event_twice_in_the_declared_state(
    deployment: Deployment, tmp_path: Path
) -> None:
    model = export(tmp_path / "visit-net")
    good = visits(8_000, users=60, seed=2)
    records = [record(v) for v in good]
    # Commits are rare, so the kill lands after scores whose offsets were never committed.
    serve(deployment, model, STREAMSCORE_COMMIT_INTERVAL_MS="10000")

    def publish_paced() -> None:
        producer = deployment.producer()
        for start in range(0, len(records), 250):
            deployment.publish("events", records[start : start + 250], producer)
            time.sleep(0.03)

    publisher = threading.Thread(target=publish_paced)
    publisher.start()
    reader = deployment.reader()
    reader.until(lambda o: len(o.scores) >= 2_000, 60)
    assert len(reader.output.scores) >= 2_000
    assert deployment.workers[0].kill() == -9  # no drain, no commit: a replay follows
    publisher.join()

    serve(deployment, model, "w2", STREAMSCORE_DATA_DIR=str(deployment.tmp / "data-w1"))
    ids = {str(v["visit_id"]) for v in good}
    out = reader.until(lambda o: o.scored_ids() >= ids, 90)
    reader.close()
    assert out.scored_ids() == ids
    assert out.first_scores_in_order()
    expected = Counter(str(v["user"]) for v in good)
    deadline = time.monotonic() + 30
    while (counts := state_counts(deployment)) != dict(expected) and time.monotonic() < deadline:
        time.sleep(0.5)  # the last changelog writes may still be landing
    wrong = {u: (counts.get(u), n) for u, n in expected.items() if counts.get(u) != n}
    assert not wrong, f"miscounted (got, expected): {list(wrong.items())[:5]}"
    # A replayed event's score names the same source record as its first score.
    source_of: dict[str, tuple[int, int]] = {}
    for _, score in out.scores:
        source = (score["source"]["partition"], score["source"]["offset"])
        assert source_of.setdefault(score["event_id"], source) == source
    assert len(out.scores) > len(ids)  # the kill did leave events to redeliver
