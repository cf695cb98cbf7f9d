"""``streamscore models add|list``: the model registry (``STREAMSCORE_MODEL_REGISTRY``).

The registry is shared by the workers of a group; an artifact enters it only
through ``models add``, which validates it completely first (see
:func:`models.registry.register_artifact`).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from models.errors import InputMismatch, ModelError
from streams.cli.common import EXIT_USAGE, fail, settings_or_exit
from streams.cli.pipeline import PIPELINE_OPTION, pipeline_or_exit


@click.group()
def models() -> None:
    """The model registry: add validated artifacts, list what can be served."""


@models.command()
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@PIPELINE_OPTION
def add(directory: Path, pipeline_ref: str | None) -> None:
    """Validate the artifact in DIR and copy it into the registry as NAME/VERSION.

    A model is checked against the pipeline it is added for (STREAMSCORE_PIPELINE
    or --pipeline): made for it, taking exactly the inputs its features produce.
    """
    from streams.pipeline.models import register_model

    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        fail(f"{directory} {what}; give the directory of a model artifact", EXIT_USAGE)
    settings = settings_or_exit()
    declared = pipeline_or_exit(pipeline_ref if pipeline_ref is not None else settings.pipeline)
    made_for = _made_for(directory)
    if made_for not in (None, declared.name):
        fail(
            f"cannot add {directory}: it was made for pipeline {made_for!r}, not {declared.name!r}",
            EXIT_USAGE,
        )

    try:
        registered = register_model(declared, directory, settings.registry_dir)
    except InputMismatch as exc:
        fail(f"cannot add {directory}: {exc}", EXIT_USAGE)
    except ModelError as exc:
        fail(f"cannot add {directory}: {exc}")
    except OSError as exc:
        fail(f"cannot write to the registry {settings.registry_dir}: {exc}")
    if not registered.created:
        click.echo(
            f"streamscore: {registered.ref} is already in the registry with the same content; "
            "nothing changed",
            err=True,
        )
    click.echo(f"added {registered.ref}")


@models.command(name="list")
def list_() -> None:
    """Print every model that can be served, packaged and registry: one NAME:VERSION a line."""
    from models.registry import list_models

    settings = settings_or_exit()
    try:
        refs = list_models(settings.registry_dir)
    except OSError as exc:
        fail(f"cannot read the registry {settings.registry_dir}: {exc}")
    for ref in refs:
        click.echo(ref)


@models.command()
@click.option(
    "--first",
    "first",
    default="fraud-mlp:1",
    show_default=True,
    help="model that scores every event",
)
@click.option(
    "--escalation", default="fraud-deep:1", show_default=True, help="model that rescores the band"
)
@click.option("--low", type=click.FloatRange(0, 1), default=0.2, show_default=True)
@click.option("--high", type=click.FloatRange(0, 1), default=0.8, show_default=True)
@click.option("--events", type=click.IntRange(1_000), default=50_000, show_default=True)
@click.option(
    "--seed", type=int, default=101, show_default=True, help="seed of the held-out synthetic set"
)
def cascade(first: str, escalation: str, low: float, high: float, events: int, seed: int) -> None:
    """What escalating the uncertain band to a heavier fraud model costs and buys (AUC,
    events/s), on a held-out set of the fraud pipeline's synthetic world."""
    from models.registry import resolve
    from pipelines.fraud.cascade import evaluate_cascade

    if low > high:
        fail("--low must not be above --high", EXIT_USAGE)
    settings = settings_or_exit()
    try:
        paths = resolve(first, settings.registry_dir), resolve(escalation, settings.registry_dir)
    except ModelError as exc:
        fail(str(exc), EXIT_USAGE)
    report = evaluate_cascade(paths[0], paths[1], (low, high), seed=seed, n_events=events)
    click.echo(
        f"held-out synthetic set: {report.events:,} events (seed {seed}), "
        f"fraud rate {report.fraud_rate:.2%}; band [{low:g}, {high:g}]: "
        f"{report.escalated_share:.2%} escalated\n"
    )
    click.echo("| scoring | AUC | model events/s (1 thread) |")
    click.echo("|---|---|---|")
    click.echo(f"| {first} alone | {report.auc_first:.4f} | {report.rate_first:,.0f} |")
    click.echo(
        f"| {escalation} alone | {report.auc_escalation:.4f} | {report.rate_escalation:,.0f} |"
    )
    click.echo(
        f"| {first}, band escalated to {escalation} | {report.auc_cascade:.4f} "
        f"| {report.rate_cascade:,.0f} |"
    )


def _made_for(directory: Path) -> str | None:
    """The ``pipeline`` a manifest names (None: none, or no readable manifest; the add says why)."""
    try:
        data = json.loads((directory / "manifest.json").read_bytes())
    except (OSError, ValueError):
        return None
    made_for = data.get("pipeline") if isinstance(data, dict) else None
    return made_for if isinstance(made_for, str) else None
