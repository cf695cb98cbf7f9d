"""``streamscore worker``: the Faust worker (``faust -A streams.app worker``)."""

from __future__ import annotations

import sys

import click

from streams.cli.common import served_pipeline_or_exit, settings_or_exit

FAUST_LOG_LEVELS = {"debug": "debug", "info": "info", "warning": "warn", "error": "error"}


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a worker; options are Faust's worker options (see `streamscore worker --help`)."""
    settings = settings_or_exit()  # exit 2 on a bad STREAMSCORE_* value, before Faust starts
    served_pipeline_or_exit(settings)
    args = list(ctx.args)
    if not any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in args):
        args += ["--loglevel", FAUST_LOG_LEVELS[settings.log_level]]
    from streams.app import app  # imported late: it builds the app from the environment

    sys.argv = ["streamscore", "worker", *args]
    app.main()
