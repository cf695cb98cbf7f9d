"""``streamscore train``: train the default architecture on the synthetic generator."""

from __future__ import annotations

from pathlib import Path

import click

from models.errors import ModelError
from streams.cli.common import fail


@click.command()
@click.option("--version", "version", default="1", show_default=True, help="Artifact version.")
@click.option("--seed", default=7, show_default=True, help="Seed: same seed, same weights.")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Artifact directory to write (default: regenerate the packaged model).",
)
def train(version: str, seed: int, output: Path | None) -> None:
    """Train deterministically and write a model artifact; print its held-out AUC."""
    from models.train import train as run_training

    try:
        report = run_training(seed=seed, version=version, output=output)
    except (ModelError, OSError) as exc:
        fail(str(exc))
    click.echo(
        f"wrote {report.path}: AUC {report.auc:.4f} on {report.n_test} held-out events "
        f"(trained on {report.n_train}, fraud rate {report.fraud_rate:.1%}, "
        f"{report.seconds:.1f}s)"
    )
