"""``fraud``, the default pipeline: card and account events scored for fraud, in one package.

Its event (:mod:`pipelines.fraud.events`, decoded by :mod:`pipelines.fraud.decode`),
its per-account history and feature catalogue (:mod:`pipelines.fraud.features`,
served by :mod:`pipelines.fraud.intake`), its model family
(:mod:`pipelines.fraud.model`), the synthetic world it is trained and demonstrated
on (:mod:`pipelines.fraud.synthetic`), its training (:mod:`pipelines.fraud.train`)
and its packaged models (``artifacts/``). The worker still serves it through
its own intake rather than a :class:`~streams.pipeline.Pipeline` declaration.
"""
