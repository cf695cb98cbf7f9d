"""``docs/pipelines.md`` run as written, in a fresh directory: its files are written from
its code blocks, its scripts and ``$`` commands run in order, and each command's
printed lines must appear in what it prints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "pipelines.md"
BIN = Path(sys.executable).parent


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block before the packaged pipelines' section."""
    text = text.split("## The packaged")[0]
    return [(m[1], m[2]) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S)]


@pytest.mark.broker  # the demo starts its own
def test_the_pipelines_guide_runs_as_written(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "STREAMSCORE_MODEL_REGISTRY": str(tmp_path / "registry"),
        "STREAMSCORE_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("STREAMSCORE_PIPELINE", None)
    ran = 0
    printed: dict[str, str] = {}
    for language, body in blocks(GUIDE.read_text()):
        if language == "python" and "pipeline = Pipeline(" in body:
            (tmp_path / "visits.py").write_text(body)
        elif language == "":
            (tmp_path / "visits.jsonl").write_text(body)
        elif language == "python":
            (tmp_path / "script.py").write_text(body)
            done = subprocess.run(
                [sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True,
                text=True, timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            ran += 1
        elif language == "console":
            command, *expected = body.strip().splitlines()
            assert command.startswith("$ ")
            done = subprocess.run(
                command[2:], shell=True, cwd=tmp_path, env=env, capture_output=True,
                text=True, timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 0, (command, done.stderr)
            printed[command[2:].split()[2]] = done.stdout
            for line in expected:
                assert line in done.stdout.splitlines(), (command, done.stdout)
            ran += 1
    assert ran == 5  # features, the training script, check, models add, demo
    scores = [json.loads(line) for line in printed["check"].splitlines()]
    assert [s["event_id"] for s in scores] == ["v1", "v2", "v3"]
    assert (tmp_path / "registry" / "visit-net" / "1" / "manifest.json").is_file()
