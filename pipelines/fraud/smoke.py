"""The smoke batch: a model must score a realistic batch sensibly before it enters the registry.

Checking the manifest and the checksum proves an artifact is intact, not that
it scores: weights that overflow to NaN, or a spec whose preprocessing does not
fit the module, would only show on the worker's first batch. So the registry
runs every new model on :data:`SMOKE_ROWS` rows built exactly as the worker
builds them (:func:`pipelines.fraud.features.featurize`, via
:func:`pipelines.fraud.train.build_features`, over synthetic events, some
entities with a profile and some without, so imputation is exercised too) and
requires one finite score in [0, 1] per row.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from models.errors import ArtifactError
from pipelines.fraud.artifact import LoadedModel
from pipelines.fraud.features import RawFeatures
from pipelines.fraud.synthetic import SyntheticWorld
from pipelines.fraud.train import build_features

__all__ = ["SMOKE_ROWS", "check_smoke", "smoke_features"]

SMOKE_ROWS = 64
_SEED = 20_261_122


@cache
def smoke_features() -> RawFeatures:
    """:data:`SMOKE_ROWS` rows of raw features (deterministic; built once per process)."""
    world = SyntheticWorld(_SEED, n_entities=12)
    events = [labeled.event for labeled in world.events(SMOKE_ROWS)]
    # A third of the entities lose their profile: unknown features must be imputed.
    table = {
        entity: features
        for i, (entity, features) in enumerate(sorted(world.feature_table().items()))
        if i % 3
    }
    return build_features(events, table)


def check_smoke(model: LoadedModel) -> None:
    """Raise :class:`ArtifactError` unless ``model`` gives a finite score in [0, 1] per row."""
    raw = smoke_features()
    try:
        scores = np.asarray(model.predict(raw), dtype=np.float64)
    except (RuntimeError, ValueError) as exc:
        raise ArtifactError(
            f"{model.ref}: the smoke batch of {len(raw)} rows failed ({exc})"
        ) from exc
    if scores.shape != (len(raw),):
        raise ArtifactError(
            f"{model.ref}: the smoke batch of {len(raw)} rows gave scores of shape "
            f"{list(scores.shape)}, not one per row"
        )
    bad = ~np.isfinite(scores) | (scores < 0.0) | (scores > 1.0)
    if bad.any():
        first = float(scores[np.argmax(bad)])
        raise ArtifactError(
            f"{model.ref}: {int(bad.sum())} of {len(raw)} scores of the smoke batch are not "
            f"finite numbers in [0, 1] (e.g. {first}); the weights are broken: re-train the model"
        )
