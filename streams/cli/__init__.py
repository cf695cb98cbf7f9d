"""The ``streamscore`` command: operator-facing subcommands, one module each."""

from __future__ import annotations

import click

from streams.cli.bench import bench
from streams.cli.broker import broker
from streams.cli.demo import demo
from streams.cli.dlq import dlq
from streams.cli.models import models
from streams.cli.pipeline import pipeline
from streams.cli.produce import produce
from streams.cli.rollout import rollout
from streams.cli.train import train
from streams.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamscore")
def main() -> None:
    """streamscore: micro-batched PyTorch scoring of Kafka streams, in order per key."""


main.add_command(broker)
main.add_command(worker)
main.add_command(demo)

main.add_command(train)
main.add_command(bench)
main.add_command(produce)
main.add_command(dlq)
main.add_command(models)
main.add_command(rollout)
main.add_command(pipeline)

__all__ = ["main"]
