"""``streamscore bench``: throughput, latency and memory of streamscore against its peers.

One embedded broker, one input data set, several configurations each on its
own topics and consumer group (:mod:`benchmarks.configs`). The input
is pre-loaded (:mod:`~benchmarks.preload`) before a configuration's
process starts, so throughput measures draining a backlog; then paced loads
measure latency and a burst measures memory (:mod:`~benchmarks.runner`,
:mod:`~benchmarks.measure`); :mod:`~benchmarks.report` writes
the tables and plots.
"""
