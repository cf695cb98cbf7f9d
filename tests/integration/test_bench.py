"""``streamscore bench`` end to end on a tiny input: every event accounted for, sane numbers."""

from __future__ import annotations

import math
import re
import tempfile
import uuid
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks import fetch_probe, runner
from benchmarks.configs import CommandProcess, Config, Launch
from benchmarks.measure import OutputTally
from benchmarks.preload import Topics
from streams.cli import main
from streams.kafka.embedded import EmbeddedBroker
from streams.metrics import LATENCY_BUCKETS

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


def test_bench_runs_streamscore_configurations_and_reports(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["bench", "--events", "2000", "--keys", "200", "--partitions", "4",
         "--malformed-share", "0.01", "--configs", "a,b,e", "--latency-loads", "0.1",
         "--latency-seconds", "1.5", "--burst", "0.25", "--overload", "1.5",
         "--overload-deadline-ms", "1", "--output", str(tmp_path), "--name", "t"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    report = orjson.loads((tmp_path / "results-t.json").read_bytes())
    phases = report["phases"]
    drains = {p["config"]: p for p in phases if p["kind"] == "drain"}
    assert set(drains) == {"a", "b", "e"}
    bare = drains.pop("e")  # passes every record on, malformed ones included
    assert (bare["records"], bare["missing"], bare["scored"], bare["other"]) == (2000, 0, 1980, 20)
    assert bare["mean_batch"] is None
    assert bare["in_worker"] is None
    for drain in drains.values():
        assert drain["records"] == 2000
        assert drain["missing"] == 0
        assert drain["scored"] == 1980
        assert drain["dead"] == 20
        assert drain["rate"] > 0
        assert drain["peak_rss"] > 20 * 2**20
        assert drain["mean_batch"] >= 1
    assert drains["b"]["mean_batch"] == 1.0
    assert drains["a"]["mean_batch"] > 1.0

    # Overload: streamscore as shipped only, every admitted event scored, in flight bounded,
    # and with a 1 ms deadline (every event is older than that when scored) degraded scores.
    (over,) = [p for p in phases if p["kind"] == "overload"]
    assert over["config"] == "a"
    assert over["offered_rate"] == pytest.approx(1.5 * drains["a"]["rate"])
    assert (over["missing"], over["duplicates"], over["scored"]) == (0, 0, over["records"])
    assert 0 < over["max_in_flight"] <= 4096
    assert over["scored"] >= over["degraded"] >= over["deadline_missed"] > over["scored"] / 2
    assert 0 < over["in_worker"]["p50"] <= over["in_worker"]["p99"]

    measured = [p for p in phases if p["kind"] in ("load", "burst")]
    loads = {p["config"]: p for p in measured if p["kind"] == "load"}
    assert set(loads) == {"a", "e"}  # 10% of (a)'s rate is above what (b) drains
    # The shares come from histogram buckets, interpolated inside the bucket that holds the
    # quantile: at most the upper bound of the bucket that holds the exact end-to-end p99.
    exact = loads["a"]["latency"]["p99"] / 1000
    bound = 1000 * next((b for b in LATENCY_BUCKETS if b >= exact), math.inf)
    for share in ("in_worker", "arrival"):  # the worker's own share, and Kafka's before it
        worker = loads["a"][share]
        assert 0 < worker["p50"] <= worker["p99"] <= bound + 5, share
    assert loads["e"]["arrival"] is None
    for phase in measured:
        assert phase["missing"] == 0, phase
        assert phase["scored"] == phase["records"]
        latency = phase["latency"]
        assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
        assert not math.isnan(phase["rate"])
        assert phase["rate"] > 0

    text = (tmp_path / "results-t.md").read_text()
    assert "| (a) streamscore |" in text
    assert "| (b) streamscore batch=1 |" in text
    assert "| (e) bare confluent-kafka (no framework) |" in text
    assert "## Repeated drains" not in text
    assert "streamscore bench --events 2000" in text  # the command that repeats the run
    assert text in result.output  # the same table is printed


def test_bench_rounds_drain_every_configuration_again_and_report_medians(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        main,
        ["bench", "--events", "1000", "--keys", "100", "--partitions", "2", "--configs", "e",
         "--latency-loads", "", "--burst", "0", "--rounds", "3", "--output", str(tmp_path),
         "--name", "r"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    phases = orjson.loads((tmp_path / "results-r.json").read_bytes())["phases"]
    assert [(p["config"], p["kind"], p["round"]) for p in phases] == [
        ("e", "drain", 1), ("e", "drain", 2), ("e", "drain", 3),
    ]  # fmt: skip
    assert all(p["records"] == 1000 and p["missing"] == 0 and p["rate"] > 0 for p in phases)
    text = (tmp_path / "results-r.md").read_text()
    assert "## Repeated drains" in text
    assert text.count("| median |") == 1


def test_bench_runs_the_purchases_pipeline_on_its_real_log(tmp_path: Path) -> None:
    """streamscore serving purchases drains the first 3,000 purchases, and the report gains
    the pipeline's stages without Kafka (the model batched against one event at a time)."""
    result = CliRunner().invoke(
        main,
        ["bench", "--pipeline", "purchases", "--events", "3000", "--partitions", "4",
         "--configs", "a,e", "--latency-loads", "", "--burst", "0", "--overload", "0",
         "--output", str(tmp_path), "--name", "p"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = orjson.loads((tmp_path / "results-p.json").read_bytes())
    drains = {p["config"]: p for p in report["phases"] if p["kind"] == "drain"}
    assert set(drains) == {"a", "e"}
    served = drains["a"]
    assert (served["records"], served["missing"], served["duplicates"]) == (3000, 0, 0)
    assert (served["scored"], served["dead"]) == (2985, 15)  # 0.5% malformed
    assert served["mean_batch"] >= 1
    assert (drains["e"]["scored"], drains["e"]["other"]) == (2985, 15)  # all passed on
    stages = report["stages"]
    assert (stages["events"], stages["batch"]) == (20_000, 256)
    for name in ("validate_us", "features_us", "model_batched_us", "model_single_us"):
        assert 0 < stages[name] < math.inf, name
    assert stages["batched_speedup"] == stages["model_single_us"] / stages["model_batched_us"]
    text = (tmp_path / "results-p.md").read_text()
    assert "- pipeline: purchases (its declared sample, replayed)" in text
    assert "## The pipeline's stages without Kafka" in text
    assert "streamscore bench --events 3000 --pipeline purchases" in text


def test_bench_refuses_an_unknown_configuration(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "--configs", "a,z", "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert "--configs" in result.output


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--pipeline", "purchases", "--configs", "a,c"], "configuration c (naive Faust)"),
        (
            ["--pipeline", "purchases", "--configs", "a", "--payload-bytes", "300"],
            "pads the fraud events only",
        ),
        (["--pipeline", "nosuch", "--configs", "a"], "unknown pipeline 'nosuch'"),
        (["--configs", "a", "--overload", "0.9"], "--overload must be 0 (none) or above 1"),
        (["--pipeline", "tests.pipelines.visits:pipeline", "--configs", "a"], "declares no sample"),
    ],
)
def test_bench_refuses_what_a_pipeline_cannot_run(
    tmp_path: Path, args: list[str], reason: str
) -> None:
    result = CliRunner().invoke(main, ["bench", *args, "--output", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert reason in result.output
    assert "Traceback" not in result.output


def test_bench_fails_when_a_configuration_loses_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that consumes nothing: the run reports the loss and exits 1."""

    def silent(config: Config, topics: Topics, launch: Launch) -> CommandProcess:
        return CommandProcess(["sleep", "60"], {}, tmp_path / "silent.log").start()

    monkeypatch.setattr(runner, "start", silent)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the kept logs land here
    result = CliRunner().invoke(
        main,
        ["bench", "--events", "300", "--configs", "a", "--latency-loads", "", "--burst", "0",
         "--timeout", "2", "--output", str(tmp_path), "--name", "lost"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "events lost: (a) drain: 300 of 300" in result.output
    assert "## Lost events" in (tmp_path / "results-lost.md").read_text()


def test_the_output_reader_reads_a_partition_of_many_small_record_batches(
    broker: EmbeddedBroker,
) -> None:
    """Configuration (b) writes one record batch per score; the reader must still read them.

    The embedded broker answers a fetch with a short wait empty once a partition
    holds some 20,000 record batches, so a reader with a 10 ms fetch wait found
    none of (b)'s scores after a long drain.
    """
    scores, dlq = f"reader-{uuid.uuid4().hex[:8]}-scores", f"reader-{uuid.uuid4().hex[:8]}-dlq"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(dlq, 1, 1)])[dlq].result(10)
    n = 25_000
    fetch_probe.write_one_record_batches(broker.bootstrap, scores, n)
    sent = {f"e{i}": 0 for i in range(n)}

    tally = OutputTally(broker.bootstrap, scores, dlq, partitions=1)
    try:
        out = tally.read(sent, malformed=0, timeout_s=60)
    finally:
        tally.close()
    assert out.scored == n
    assert out.missing == 0


def test_the_fetch_probe_reports_what_each_read_got(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fetch_probe", "--batches", "300", "--wait-ms", "100", "--timeout", "10"]
    monkeypatch.setattr("sys.argv", argv)
    fetch_probe.main()
    reads = [
        re.fullmatch(
            r"300 one-record batches, fetch wait 100 ms, from the (\w+): "
            r"read (\d+) of (\d+) in [\d.]+ s",
            line,
        )
        for line in capsys.readouterr().out.splitlines()
    ]
    assert [(m[1], int(m[2]), int(m[3])) for m in reads if m] == [
        ("end", 10, 10), ("middle", 150, 150), ("start", 300, 300),
    ]  # fmt: skip
