"""Shared by the commands: settings that turn into exit code 2, not a traceback."""

from __future__ import annotations

from typing import Any, NoReturn

import click

from streams.errors import ConfigError, StreamscoreError
from streams.settings import Settings, load_settings

#: Exit codes: 1 = the work failed, 2 = the configuration or the arguments are wrong.
EXIT_FAILED = 1
EXIT_USAGE = 2


def settings_or_exit(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def served_pipeline_or_exit(settings: Settings) -> None:
    """Exit 2 unless the configured pipeline is one a worker can serve (``fraud``, so far).

    A declared pipeline is loaded first, so a broken one is reported as such.
    """
    if settings.pipeline == "fraud":
        return
    from streams.pipeline.loader import load_pipeline

    try:
        load_pipeline(settings.pipeline)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    fail(
        f"STREAMSCORE_PIPELINE={settings.pipeline}: the worker serves the packaged 'fraud' "
        "pipeline only so far; try a declared pipeline with `streamscore pipeline check`",
        EXIT_USAGE,
    )


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"streamscore: {message}", err=True)
    raise SystemExit(code)


def fail_from(exc: StreamscoreError) -> NoReturn:
    fail(str(exc), EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED)
