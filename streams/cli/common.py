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
    """Exit 2 unless the configured pipeline can be served: it loads, and so does its
    primary model, for it (made for it, taking exactly the inputs its features produce), and
    its routing rules name fields its event has.

    Checked before a worker joins a group, so a mistake is a message, not a crash loop.
    """
    from models.errors import ModelError
    from models.registry import resolve
    from streams.runtime import program_loader, served_model, served_pipeline
    from streams.scoring.rules import check_rules

    try:
        declared = served_pipeline(settings)
        ref = served_model(settings, declared)
        check_rules(settings.routing_rules, declared.event, declared.name)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    import torch

    try:
        program_loader(declared)(resolve(ref, settings.registry_dir), torch.device("cpu")).close()
    except ModelError as exc:
        fail(f"model {ref} cannot serve pipeline {declared.name!r}: {exc}", EXIT_USAGE)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"streamscore: {message}", err=True)
    raise SystemExit(code)


def fail_from(exc: StreamscoreError) -> NoReturn:
    fail(str(exc), EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED)
