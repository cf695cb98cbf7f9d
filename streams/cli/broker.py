"""``streamscore broker``: the embedded Kafka-compatible broker, in the foreground."""

from __future__ import annotations

import signal
import sys
import threading

import click

from streams.cli.common import fail
from streams.errors import BrokerError
from streams.kafka.embedded import EmbeddedBroker


@click.command()
@click.option("--port", default=9092, show_default=True, help="TCP port (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def broker(port: int, host: str) -> None:
    """Run the embedded broker (memory only) until SIGINT or SIGTERM."""
    if not 0 <= port < 65_536:
        fail(f"--port {port} is not a TCP port", 2)
    embedded = EmbeddedBroker(host, port)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        bootstrap = embedded.start()
    except BrokerError as exc:
        fail(str(exc))
    click.echo(f"bootstrap={bootstrap}")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            if embedded.process is None or embedded.process.poll() is not None:
                fail("the embedded broker exited unexpectedly")
    finally:
        embedded.stop()
