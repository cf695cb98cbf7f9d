"""Errors of the benchmark harness.

::

    StreamscoreError           (streams.errors)
    └── BenchmarkError         a benchmark could not run or its result is not valid
        ├── PeerFailed         a measured process exited or never produced output: see its log
        └── EventsLost         a configuration's outputs fell short of its inputs
"""

from __future__ import annotations

from streams.errors import StreamscoreError


class BenchmarkError(StreamscoreError):
    """The benchmark could not run, or its result would be misleading; the message says why."""


class PeerFailed(BenchmarkError):
    """A measured process (worker, naive Faust app, Quix peer) failed; its log has the reason."""


class EventsLost(BenchmarkError):
    """Some input records got neither an output nor a dead letter within the timeout."""
