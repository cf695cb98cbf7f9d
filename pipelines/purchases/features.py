"""What the purchases model sees, computed from the state just before each purchase."""

from __future__ import annotations

import numpy as np

from streams.pipeline import Batch

__all__ = ["AGGREGATES", "DAY", "SLOT_FEATURES", "WINDOW", "features"]

DAY = 86_400.0
#: Purchases kept per customer, handed to the model as a sequence.
WINDOW = 10
#: Per slot of the sequence: log dollars, log CDs, log days before this purchase, real.
SLOT_FEATURES = 4
AGGREGATES = (
    "log_purchases",  # earlier purchases
    "log_mean_dollars",  # their mean value
    "log_largest_dollars",
    "log_days_since_previous",
    "no_history",  # 1 for a customer's first purchase
    "log_days_since_first",
    "log_recent_purchases",  # earlier purchases decayed with a 90-day half-life
    "log_dollars",  # this purchase
    "log_cds",
)


def days(seconds: np.ndarray) -> np.ndarray:
    """log1p of days (unknown or negative: 0)."""
    out: np.ndarray = np.log1p(np.maximum(np.nan_to_num(seconds, nan=0.0), 0.0) / DAY)
    return out


def features(batch: Batch) -> dict[str, np.ndarray]:
    """Columns in, arrays out: no Python runs per purchase."""
    s, now = batch.state, batch.time
    none = s["purchases"] == 0
    aggregates = np.stack(
        [
            np.log1p(s["purchases"]),
            np.log1p(np.nan_to_num(s["mean_dollars"], nan=0.0)),
            np.log1p(np.where(none, 0.0, s["largest"])),
            days(s["gap"]),
            none.astype(np.float64),
            days(np.where(none, 0.0, now - s["first"])),
            np.log1p(s["recent_purchases"]),
            np.log1p(batch["dollars"]),
            np.log1p(batch["cds"]),
        ],
        axis=1,
    )
    assert batch.window is not None
    assert batch.length is not None
    window = batch.window  # (n, WINDOW, [dollars, cds, ts]), zero-padded at the front
    real = np.arange(WINDOW)[None, :] >= (WINDOW - batch.length)[:, None]
    sequence = np.stack(
        [
            np.log1p(window[:, :, 0]),
            np.log1p(window[:, :, 1]),
            np.where(real, days(now[:, None] - window[:, :, 2]), 0.0),
            real.astype(np.float64),
        ],
        axis=2,
    )
    return {"sequence": sequence, "aggregates": aggregates}
