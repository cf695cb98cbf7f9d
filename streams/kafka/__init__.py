"""Kafka plumbing: the Faust seam that hands over whole fetched chunks (``bulk``), the producer
(``emit``, ``transactions``), topics and their limits, table access in bulk (``tables``),
offsets in flight and what may be committed (``flow``, ``ordering``), the embedded broker.

Nothing here knows what an event means: that is the pipeline's (``streams.pipeline``).
"""
