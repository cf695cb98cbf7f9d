"""What the model sees: the feature catalogue, shared by training and serving.

Training (``models.train``) and the worker (``streams.scoring.features``) both turn
events into model input with :func:`featurize`, so the two cannot drift apart.
Raw features come out untransformed apart from fixed log/ratio maps; a model's
own preprocessing (normalisation, imputation, one-hot) is in its manifest and
applied by :mod:`models.preprocess`.

Per-entity history (count, running mean amount, time of the previous event)
is an :class:`Aggregate`. It carries the offset of the last event it counts,
so replaying an event after a crash or a rebalance never counts it twice and
an older event never rolls the state back.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

#: Profile features a model may use (from the features topic); unknown ones are NaN.
PROFILE_FEATURES: tuple[str, ...] = (
    "account_age_days",
    "chargeback_rate",
    "avg_amount_30d",
    "txn_count_30d",
)

#: Every numeric feature the pipeline computes, in column order of :attr:`RawFeatures.numeric`.
NUMERIC_FEATURES: tuple[str, ...] = (
    "amount_log",  # log1p(amount)
    "hour_sin",  # time of day (UTC) on the unit circle
    "hour_cos",
    "account_age_days_log",  # profile: log1p(account_age_days)
    "chargeback_rate",  # profile
    "avg_amount_30d_log",  # profile: log1p(avg_amount_30d)
    "txn_count_30d_log",  # profile: log1p(txn_count_30d)
    "history_count_log",  # log1p(events of this entity seen before this one)
    "history_mean_amount_log",  # log1p(mean amount of those events); NaN when none
    "seconds_since_last_log",  # log1p(seconds since the previous event); NaN when none
    "amount_vs_avg_30d",  # amount_log - avg_amount_30d_log; NaN when the profile lacks it
    "amount_vs_history",  # amount_log - history_mean_amount_log; NaN when no history
)

#: Categorical features, in column order of :attr:`RawFeatures.categorical`.
CATEGORICAL_FEATURES: tuple[str, ...] = ("channel", "country", "currency")

FloatArray = npt.NDArray[np.float32]

_AGGREGATE = struct.Struct("<qddq")
_SECONDS_PER_DAY = 86_400.0


class Aggregate(NamedTuple):
    """Online history of one entity, as kept in the aggregates table.

    A tuple: one is read and one written per entity per chunk, and tuples are
    the cheapest objects to make and take apart.
    """

    count: int  # type: ignore[assignment]  # the field hides tuple.count, unused here
    mean_amount: float
    last_ts: float
    last_offset: int

    def pack(self) -> bytes:
        return _AGGREGATE.pack(*self)

    @classmethod
    def unpack(cls, data: bytes) -> Aggregate:
        return cls._make(_AGGREGATE.unpack(data))


@dataclass(frozen=True, slots=True)
class RawFeatures:
    """Model input before a model's own preprocessing, one row per event."""

    numeric: FloatArray  # shape (n, len(NUMERIC_FEATURES)), NaN = unknown
    categorical: tuple[list[str], ...]  # one list per CATEGORICAL_FEATURES entry, n long

    def __len__(self) -> int:
        return int(self.numeric.shape[0])

    def take(self, start: int, stop: int) -> RawFeatures:
        return RawFeatures(self.numeric[start:stop], tuple(c[start:stop] for c in self.categorical))

    def select(self, rows: Sequence[int]) -> RawFeatures:
        """The given rows, in the given order."""
        return RawFeatures(
            self.numeric[np.asarray(rows, dtype=np.intp)],
            tuple([c[i] for i in rows] for c in self.categorical),
        )

    @classmethod
    def concat(cls, parts: Sequence[RawFeatures]) -> RawFeatures:
        if len(parts) == 1:
            return parts[0]
        numeric = np.concatenate([p.numeric for p in parts], axis=0)
        categorical = tuple(
            [value for p in parts for value in p.categorical[i]]
            for i in range(len(CATEGORICAL_FEATURES))
        )
        return RawFeatures(numeric, categorical)


@dataclass(frozen=True, slots=True)
class History:
    """Each event's view of its entity's history, and the history after the chunk."""

    count: list[float]
    mean_amount: list[float]  # NaN when no earlier event
    seconds_since_last: list[float]  # NaN when no earlier event
    final: dict[str, Aggregate]  # entities whose history changed (or was replayed)

    def unknown(self, rows: Sequence[bool]) -> History:
        """The same, with the history of the marked rows unknown (imputed by the model)."""
        nan = math.nan
        return History(
            [nan if u else v for v, u in zip(self.count, rows, strict=True)],
            [nan if u else v for v, u in zip(self.mean_amount, rows, strict=True)],
            [nan if u else v for v, u in zip(self.seconds_since_last, rows, strict=True)],
            self.final,
        )


def roll(
    entities: Sequence[str],
    amounts: Sequence[float],
    timestamps: Sequence[float],
    offsets: Sequence[int],
    start: Mapping[str, Aggregate | None],
) -> History:
    """Walk a chunk of events in order, giving each event the history before it.

    ``start`` holds each entity's stored history (``None`` = never seen). An
    event whose offset is not above the stored ``last_offset`` was already
    counted (a redelivery): it sees the current history and does not change
    it, though the entity's state is still returned in ``final`` so that it is
    written to the changelog again.
    """
    # Plain lists per entity ([count, mean, last_ts, last_offset]) while walking: an
    # Aggregate per event would cost more than the arithmetic.
    state: dict[str, list[float] | None] = {
        entity: None if agg is None else list(agg) for entity, agg in start.items()
    }
    count: list[float] = []
    mean: list[float] = []
    since: list[float] = []
    count_add, mean_add, since_add = count.append, mean.append, since.append
    nan = math.nan
    for entity, amount, ts, offset in zip(entities, amounts, timestamps, offsets, strict=True):
        agg = state.get(entity)
        if agg is None:
            count_add(0.0)
            mean_add(nan)
            since_add(nan)
            state[entity] = [1, amount, ts, offset]
            continue
        n, avg, last_ts, last_offset = agg
        count_add(float(n))
        mean_add(avg)
        if offset <= last_offset:
            # A redelivery: its history already counts it, so the time since "the previous"
            # event is unknown rather than 0 (which would look like a burst). The state is
            # written again all the same: after a crash the local store can be ahead of the
            # changelog, and this is how the changelog catches up.
            since_add(nan)
            continue
        since_add(max(0.0, ts - last_ts))
        n += 1
        agg[0] = n
        agg[1] = avg + (amount - avg) / n
        agg[2] = max(ts, last_ts)
        agg[3] = offset
    final = {}
    for entity in dict.fromkeys(entities):  # every entity of the chunk, in order of appearance
        n, avg, last_ts, last_offset = state[entity]  # type: ignore[misc]
        final[entity] = Aggregate(int(n), avg, last_ts, int(last_offset))
    return History(count, mean, since, final)


def featurize(
    amounts: Sequence[float],
    timestamps: Sequence[float],
    channels: list[str],
    countries: list[str],
    currencies: list[str],
    profiles: Sequence[Mapping[str, float] | None],
    history: History,
) -> RawFeatures:
    """Raw features of a chunk of events (columns as in :data:`NUMERIC_FEATURES`)."""
    n = len(amounts)
    out = np.empty((n, len(NUMERIC_FEATURES)), dtype=np.float64)
    amount_log = np.log1p(np.asarray(amounts, dtype=np.float64))
    angle = (
        np.asarray(timestamps, dtype=np.float64)
        % _SECONDS_PER_DAY
        * (2 * math.pi / _SECONDS_PER_DAY)
    )
    out[:, 0] = amount_log
    out[:, 1] = np.sin(angle)
    out[:, 2] = np.cos(angle)
    nan = math.nan
    for column, name in ((3, "account_age_days"), (5, "avg_amount_30d"), (6, "txn_count_30d")):
        values = [nan if p is None else p.get(name, nan) for p in profiles]
        out[:, column] = np.log1p(np.maximum(np.asarray(values, dtype=np.float64), 0.0))
    out[:, 4] = [nan if p is None else p.get("chargeback_rate", nan) for p in profiles]
    out[:, 7] = np.log1p(np.asarray(history.count, dtype=np.float64))
    out[:, 8] = np.log1p(np.maximum(np.asarray(history.mean_amount, dtype=np.float64), 0.0))
    out[:, 9] = np.log1p(np.asarray(history.seconds_since_last, dtype=np.float64))
    out[:, 10] = amount_log - out[:, 5]
    out[:, 11] = amount_log - out[:, 8]
    return RawFeatures(out.astype(np.float32), (channels, countries, currencies))
