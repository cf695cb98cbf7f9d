"""The pipeline API: declare your event, per-entity state, features and model input.

::

    from streams.pipeline import Batch, Count, Last, Mean, Pipeline, SincePrevious, Tensor, Window

See ``docs/pipelines.md`` for the guide. Everything named here is public and
changes only by addition.
"""

from streams.pipeline.declare import Batch, FeatureFunction, Pipeline, Tensor, Traffic
from streams.pipeline.errors import PipelineError
from streams.pipeline.loader import load_pipeline
from streams.pipeline.state import Count, Last, Max, Mean, Min, SincePrevious, Sum, Window

__all__ = [
    "Batch",
    "Count",
    "FeatureFunction",
    "Last",
    "Max",
    "Mean",
    "Min",
    "Pipeline",
    "PipelineError",
    "SincePrevious",
    "Sum",
    "Tensor",
    "Traffic",
    "Window",
    "load_pipeline",
]
