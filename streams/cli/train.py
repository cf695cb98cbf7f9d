"""``streamscore train``: the pipeline's own trainer (for ``fraud``, the default, one
architecture trained on the synthetic generator)."""

from __future__ import annotations

import inspect
from pathlib import Path

import click

from models.errors import ModelError
from streams.cli.common import fail


@click.command()
@click.option("--version", "version", default=None, help="Artifact version (default: 1).")
@click.option("--seed", default=7, show_default=True, help="Seed: same seed, same weights.")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Artifact directory to write (default: regenerate the pipeline's packaged models).",
)
@click.option(
    "--architecture",
    default=None,
    help="For a pipeline that trains several: which (fraud: mlp, the primary fraud-mlp; "
    "logistic, the fallback fraud-lr; deep, fraud-deep for escalation).",
)
@click.option(
    "--pipeline",
    "pipeline_ref",
    default=None,
    metavar="P",
    help="a packaged pipeline or MODULE:ATTRIBUTE (default: STREAMSCORE_PIPELINE)",
)
def train(
    version: str | None,
    seed: int,
    output: Path | None,
    architecture: str | None,
    pipeline_ref: str | None,
) -> None:
    """Train the pipeline's models deterministically and write them; print held-out figures."""
    from streams.cli.common import EXIT_USAGE, settings_or_exit
    from streams.cli.pipeline import pipeline_or_exit
    from streams.errors import ConfigError
    from streams.pipeline.loader import packaged_artifacts

    chosen = pipeline_ref if pipeline_ref is not None else settings_or_exit().pipeline
    declared = pipeline_or_exit(chosen)
    if declared.trainer is None:
        fail(
            f"pipeline {declared.name!r} declares no trainer: train on the output of "
            "`streamscore pipeline features` in your own code",
            EXIT_USAGE,
        )
    options = {
        k: v for k, v in (("version", version), ("architecture", architecture)) if v is not None
    }
    taken = inspect.signature(declared.trainer).parameters
    for option in options:
        if option not in taken:
            fail(f"pipeline {declared.name!r}'s trainer takes no --{option}", EXIT_USAGE)
    target = output if output is not None else packaged_artifacts(chosen)
    if target is None:
        fail(f"pipeline {declared.name!r} is not packaged: give --output", EXIT_USAGE)
    try:
        metrics = declared.trainer(target, seed, **options)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    except (ModelError, OSError, RuntimeError, ValueError) as exc:
        fail(str(exc))
    shown = ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )
    click.echo(f"wrote {target}: {shown}")
