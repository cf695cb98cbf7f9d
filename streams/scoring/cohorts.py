"""Which entities a canary takes: a stable hash of the entity key, the same in every process.

All events of an entity go to the same model while the percentage is unchanged,
and raising the percentage only moves entities from the primary to the canary
(an entity's bucket is fixed; the threshold grows).
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

__all__ = ["BUCKETS", "bucket", "members"]

#: Canary percentages resolve to 1/100 of a percent.
BUCKETS = 10_000


def bucket(entity_id: str) -> int:
    """The entity's stable bucket in ``[0, BUCKETS)``."""
    digest = hashlib.blake2b(entity_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def members(entity_ids: list[str], percent: float) -> npt.NDArray[np.bool_]:
    """Which of ``entity_ids`` the canary takes at ``percent`` (0 < percent <= 100)."""
    threshold = round(percent * BUCKETS / 100)
    return np.fromiter(
        (bucket(entity) < threshold for entity in entity_ids), dtype=np.bool_, count=len(entity_ids)
    )
