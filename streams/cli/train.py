"""``streamscore train``: train a packaged architecture on the synthetic generator."""

from __future__ import annotations

from pathlib import Path

import click

from models.errors import ModelError
from streams.cli.common import fail

#: The shipped architectures: name -> hidden layer widths.
ARCHITECTURES: dict[str, tuple[str, tuple[int, ...]]] = {
    "mlp": ("fraud-mlp", (64, 32)),  # the primary model
    "logistic": ("fraud-lr", ()),  # the lighter fallback of the ladder
    "deep": ("fraud-deep", (256, 128, 64)),  # heavier, for escalation
}


@click.command()
@click.option("--version", "version", default="1", show_default=True, help="Artifact version.")
@click.option("--seed", default=7, show_default=True, help="Seed: same seed, same weights.")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Artifact directory to write (default: regenerate the packaged model).",
)
@click.option(
    "--architecture",
    type=click.Choice(sorted(ARCHITECTURES)),
    default="mlp",
    show_default=True,
    help="mlp: fraud-mlp (primary); logistic: fraud-lr (fallback); deep: fraud-deep (escalation).",
)
@click.option(
    "--pipeline",
    "pipeline_ref",
    default=None,
    metavar="P",
    help="a packaged pipeline or MODULE:ATTRIBUTE (default: STREAMSCORE_PIPELINE)",
)
def train(
    version: str, seed: int, output: Path | None, architecture: str, pipeline_ref: str | None
) -> None:
    """Train deterministically and write a model artifact; print its held-out AUC."""
    from pipelines.fraud.train import train as run_training
    from streams.cli.common import settings_or_exit

    chosen = pipeline_ref if pipeline_ref is not None else settings_or_exit().pipeline
    if chosen != "fraud":
        _train_declared(chosen, seed, output)
        return

    name, hidden = ARCHITECTURES[architecture]
    try:
        report = run_training(seed=seed, version=version, output=output, name=name, hidden=hidden)
    except (ModelError, OSError, ValueError) as exc:
        fail(str(exc))
    click.echo(
        f"wrote {report.path}: AUC {report.auc:.4f} on {report.n_test} held-out events "
        f"(trained on {report.n_train}, fraud rate {report.fraud_rate:.1%}, "
        f"{report.seconds:.1f}s)"
    )


def _train_declared(ref: str, seed: int, output: Path | None) -> None:
    """A declared pipeline's own trainer; its packaged artifacts when no --output is given."""
    from streams.cli.common import EXIT_USAGE
    from streams.cli.pipeline import pipeline_or_exit
    from streams.pipeline.loader import packaged_artifacts

    declared = pipeline_or_exit(ref)
    if declared.trainer is None:
        fail(
            f"pipeline {declared.name!r} declares no trainer: train on the output of "
            "`streamscore pipeline features` in your own code",
            EXIT_USAGE,
        )
    target = output if output is not None else packaged_artifacts(ref)
    if target is None:
        fail(f"pipeline {declared.name!r} is not packaged: give --output", EXIT_USAGE)
    try:
        metrics = declared.trainer(target, seed)
    except (ModelError, OSError, RuntimeError, ValueError) as exc:
        fail(str(exc))
    shown = ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )
    click.echo(f"wrote {target}: {shown}")
