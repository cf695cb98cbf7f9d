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


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"streamscore: {message}", err=True)
    raise SystemExit(code)


def fail_from(exc: StreamscoreError) -> NoReturn:
    fail(str(exc), EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED)
