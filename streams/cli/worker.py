"""``streamscore worker``: the Faust worker (``faust -A streams.app worker``)."""

from __future__ import annotations

import os
import sys

import click

from streams.cli.common import fail, served_pipeline_or_exit, settings_or_exit

FAUST_LOG_LEVELS = {"debug": "debug", "info": "info", "warning": "warn", "error": "error"}


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a worker; ``--pipeline P`` picks the pipeline, other options are Faust's worker
    options (see `streamscore worker --help`)."""
    args = list(ctx.args)
    chosen = _take_pipeline(args)
    if chosen is not None:  # the app reads its settings from the environment
        os.environ["STREAMSCORE_PIPELINE"] = chosen
    settings = settings_or_exit()  # exit 2 on a bad STREAMSCORE_* value, before Faust starts
    served_pipeline_or_exit(settings)
    if not any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in args):
        args += ["--loglevel", FAUST_LOG_LEVELS[settings.log_level]]
    from streams.app import app  # imported late: it builds the app from the environment

    sys.argv = ["streamscore", "worker", *args]
    app.main()


def _take_pipeline(args: list[str]) -> str | None:
    """Remove ``--pipeline P`` (or ``--pipeline=P``) from Faust's arguments; return P."""
    for i, arg in enumerate(args):
        if arg == "--pipeline":
            if i + 1 >= len(args):
                fail("--pipeline needs a value: a packaged pipeline or MODULE:ATTRIBUTE", 2)
            value = args[i + 1]
            del args[i : i + 2]
            return value
        if arg.startswith("--pipeline="):
            del args[i]
            return arg.partition("=")[2]
    return None
