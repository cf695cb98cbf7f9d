"""``streamscore pipeline check|features``: a pipeline and its model tried on a file of events.

Both run the worker's validation, state walk and features over the file's lines
in order, from empty state (:mod:`streams.pipeline.offline`). ``features``
writes the model inputs for training; ``check`` scores the lines with a model.
Exit codes: 0 every line went through, 1 some did not, 2 the pipeline or the
model cannot be used.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Any

import click
import numpy as np
import orjson

from streams.cli.common import EXIT_FAILED, EXIT_USAGE, fail, settings_or_exit
from streams.pipeline.errors import PipelineError

PIPELINE_OPTION = click.option(
    "--pipeline",
    "pipeline_ref",
    default=None,
    metavar="P",
    help="a packaged pipeline or MODULE:ATTRIBUTE (default: STREAMSCORE_PIPELINE)",
)


def pipeline_or_exit(ref: str | None) -> Any:
    """The pipeline ``ref`` names (or the configured one); exit 2 with the reason if none."""
    from streams.pipeline.loader import load_pipeline

    chosen = ref if ref is not None else settings_or_exit().pipeline
    try:
        return load_pipeline(chosen)
    except PipelineError as exc:
        fail(str(exc), EXIT_USAGE)


@click.group()
def pipeline() -> None:
    """Try a pipeline on a file of events: its features, or its scores."""


@pipeline.command()
@PIPELINE_OPTION
@click.option(
    "--model", "model_ref", default=None, metavar="REF", help="model path or NAME[:VERSION]"
)
@click.argument("file", type=click.File("rb"))
def check(pipeline_ref: str | None, model_ref: str | None, file: IO[bytes]) -> None:
    """Score each line of FILE (one JSON event per line, `-` for stdin) as a worker would.

    One score JSON per scored line on stdout; for a line that cannot be scored,
    {"line", "stage", "error"} on stderr.
    """
    from models.errors import ModelError
    from models.registry import resolve
    from streams.pipeline.models import load_model
    from streams.pipeline.offline import run_lines

    declared = pipeline_or_exit(pipeline_ref)
    settings = settings_or_exit()
    ref = model_ref if model_ref is not None else declared.model
    if ref is None:
        fail(f"pipeline {declared.name!r} names no default model: give --model", EXIT_USAGE)
    try:
        model = load_model(declared, resolve(ref, settings.registry_dir))
    except ModelError as exc:
        fail(f"model {ref}: {exc}", EXIT_USAGE)
    name, version = model.manifest.name, model.manifest.version
    schema = declared.schema
    failed = 0
    out = sys.stdout.buffer
    try:
        for chunk in run_lines(declared, file):
            failures = {f.line: f for f in chunk.failures}
            scores: dict[int, float] = {}
            featurized = chunk.featurized
            if featurized is not None:
                usable = np.flatnonzero(~featurized.unusable)
                if len(usable):
                    inputs = {k: v[usable] for k, v in featurized.inputs.items()}
                    try:
                        values = model.predict(inputs)
                    except ModelError as exc:
                        for row in usable:
                            line = int(chunk.lines[row])
                            failures[line] = _model_failure(line, str(exc))
                    else:
                        for row, value in zip(usable, values.tolist(), strict=True):
                            line = int(chunk.lines[row])
                            if 0.0 <= value <= 1.0:
                                scores[line] = value
                            else:
                                failures[line] = _model_failure(
                                    line, f"score {value} not in [0, 1]"
                                )
            by_line = {int(line): row for row, line in enumerate(chunk.lines)}
            for line in sorted(set(failures) | set(scores)):
                if line in failures:
                    failed += 1
                    sys.stdout.flush()
                    click.echo(orjson.dumps(failures[line].as_json()).decode(), err=True)
                    continue
                event = chunk.events[by_line[line]]
                assert featurized is not None
                record = {
                    "event_id": getattr(event, schema.event_id),
                    "entity_id": getattr(event, schema.key),
                    "score": scores[line],
                    "model": name,
                    "model_version": version,
                    "degraded": bool(featurized.restarted[by_line[line]]),
                    "event_ts": float(featurized.time[by_line[line]]),
                    "scored_ts": time.time(),
                }
                out.write(orjson.dumps(record) + b"\n")
            out.flush()
    except PipelineError as exc:
        fail(str(exc), EXIT_USAGE)
    if failed:
        raise SystemExit(EXIT_FAILED)


def _model_failure(line: int, error: str) -> Any:
    from streams.pipeline.offline import Failure

    return Failure(line, "model", error)


@pipeline.command()
@PIPELINE_OPTION
@click.argument("file", type=click.File("rb"))
@click.option(
    "--output",
    "-o",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="the .npz file to write",
)
def features(pipeline_ref: str | None, file: IO[bytes], output: Path) -> None:
    """Write the model inputs of every valid line of FILE to OUT.npz (and `line`, the line numbers).

    Lines that do not validate are reported on stderr as {"line", "stage", "error"}.
    """
    from streams.pipeline.offline import run_lines

    declared = pipeline_or_exit(pipeline_ref)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in declared.inputs}
    lines: list[np.ndarray] = []
    invalid = 0
    try:
        for chunk in run_lines(declared, file):
            for failure in chunk.failures:
                if failure.stage in ("decode", "validate"):
                    invalid += 1
                    click.echo(orjson.dumps(failure.as_json()).decode(), err=True)
            if chunk.featurized is not None:
                for name, array in chunk.featurized.inputs.items():
                    parts[name].append(array)
                lines.append(chunk.lines)
    except PipelineError as exc:
        fail(str(exc), EXIT_USAGE)
    arrays = {
        name: np.concatenate(chunks) if chunks else np.zeros((0, *declared.inputs[name].shape))
        for name, chunks in parts.items()
    }
    arrays["line"] = np.concatenate(lines) if lines else np.zeros(0, np.int64)
    try:
        with output.open("wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
    except OSError as exc:
        fail(f"cannot write {output}: {exc}")
    click.echo(f"wrote {len(arrays['line'])} events to {output}", err=True)
    if invalid:
        raise SystemExit(EXIT_FAILED)
