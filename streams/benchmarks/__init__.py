"""``streamscore bench``: throughput, latency and memory of streamscore against its peers.

One embedded broker, one input data set, several configurations each on its
own topics and consumer group (:mod:`streams.benchmarks.configs`). The input
is pre-loaded (:mod:`~streams.benchmarks.preload`) before a configuration's
process starts, so throughput measures draining a backlog; then paced loads
measure latency and a burst measures memory (:mod:`~streams.benchmarks.runner`,
:mod:`~streams.benchmarks.measure`); :mod:`~streams.benchmarks.report` writes
the tables and plots.
"""
