"""``streamscore models add|list``: the model registry (``STREAMSCORE_MODEL_REGISTRY``).

The registry is shared by the workers of a group; an artifact enters it only
through ``models add``, which validates it completely first (see
:func:`models.registry.register_artifact`).
"""

from __future__ import annotations

from pathlib import Path

import click

from models.errors import ModelError
from streams.cli.common import EXIT_USAGE, fail, settings_or_exit


@click.group()
def models() -> None:
    """The model registry: add validated artifacts, list what can be served."""


@models.command()
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
def add(directory: Path) -> None:
    """Validate the artifact in DIR and copy it into the registry as NAME/VERSION."""
    from models.registry import register_artifact

    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        fail(f"{directory} {what}; give the directory of a model artifact", EXIT_USAGE)
    settings = settings_or_exit()
    try:
        registered = register_artifact(directory, settings.registry_dir)
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
