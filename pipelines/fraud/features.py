"""What the model sees: the feature catalogue, shared by training and serving.

The worker, ``pipeline check`` and ``pipeline features`` compute the model input
with the pipeline's feature function (:func:`features`, over a chunk and its
state); training and the synthetic world with :func:`featurize`, over lists.
Both compute the numbers with :func:`numeric_features`, and a test holds their
outputs equal. Raw features come out untransformed apart from fixed log/ratio
maps; a model's own preprocessing (normalisation, imputation, one-hot) is in
its manifest and applied by :mod:`pipelines.fraud.preprocess`.

Per-entity history (count, mean amount, time since the previous event) is the
pipeline's declared state (:data:`STATE`, laid out as :data:`HISTORY`) and
walked by the same function as every pipeline's (:func:`roll` hands it the
fraud columns). Its
record carries the offset of the last event it counts, so replaying an event
after a crash or a rebalance never counts it twice and an older event never
rolls the state back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from pipelines.fraud.events import CHANNELS
from streams.pipeline.declare import Batch
from streams.pipeline.state import Count, Mean, SincePrevious, StateLayout
from streams.pipeline.walk import walk

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
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
#: Text values of one column: a list, or the object array a Batch holds.
Texts = Sequence[str] | np.ndarray

_SECONDS_PER_DAY = 86_400.0

#: The history kept per entity, declared as any pipeline declares its state: one record per
#: entity, walked by :func:`streams.pipeline.walk.walk` (the state walk of every pipeline).
STATE = {"count": Count(), "mean_amount": Mean("amount"), "since_last": SincePrevious()}
HISTORY = StateLayout(STATE, None)


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

    count: Floats  # events of the entity counted before this one
    mean_amount: Floats  # their mean amount; NaN when none
    seconds_since_last: Floats  # since the latest earlier event; NaN when none or a redelivery
    final: dict[str, bytes]  # every entity of the chunk -> its stored history after it
    restarted: npt.NDArray[np.bool_]  # per event: its stored history could not be decoded

    def unknown(self, rows: npt.ArrayLike) -> History:
        """The same, with the history of the marked rows unknown (imputed by the model)."""
        mask = np.asarray(rows, dtype=np.bool_)
        nan = np.nan
        return History(
            np.where(mask, nan, self.count),
            np.where(mask, nan, self.mean_amount),
            np.where(mask, nan, self.seconds_since_last),
            self.final,
            self.restarted,
        )


def roll(
    entities: Sequence[str],
    amounts: Sequence[float],
    timestamps: Sequence[float],
    offsets: Sequence[int],
    stored: Mapping[str, bytes | None],
) -> History:
    """Walk a chunk of events in order, giving each event the history before it.

    ``stored`` holds each entity's stored history (absent or ``None``: never
    seen; a value that cannot be decoded starts over, marked in ``restarted``).
    An event whose offset is not above the one its history last counted was
    counted already (a redelivery): it sees the history and does not change
    it, though the entity's history is still returned in ``final``, so that it
    is written to the changelog again.
    """
    n = len(entities)
    distinct = list(dict.fromkeys(entities))
    index = {entity: i for i, entity in enumerate(distinct)}
    groups = np.fromiter(map(index.__getitem__, entities), dtype=np.int64, count=n)
    records, undecodable = HISTORY.decode([stored.get(entity) for entity in distinct])
    walked = walk(
        HISTORY,
        groups,
        np.fromiter(offsets, dtype=np.int64, count=n),
        np.fromiter(timestamps, dtype=np.float64, count=n),
        {"amount": np.fromiter(amounts, dtype=np.float64, count=n)},
        records,
    )
    state = walked.state
    final = dict(zip(distinct, HISTORY.encode(walked.final), strict=True))
    return History(
        state["count"], state["mean_amount"], state["since_last"], final, undecodable[groups]
    )


class StoredHistory(NamedTuple):
    """One entity's stored history, as numbers (the record itself is :data:`HISTORY`'s)."""

    count: int  # type: ignore[assignment]  # the field hides tuple.count, unused here
    mean_amount: float  # NaN when none
    last_ts: float
    last_offset: int

    def pack(self) -> bytes:
        record = HISTORY.empty(1)
        record["seen"] = self.count
        record["last_offset"] = self.last_offset
        record["last_time"] = self.last_ts
        record["count.value"] = self.count
        record["mean_amount.sum"] = self.mean_amount * self.count if self.count else 0.0
        record["mean_amount.weight"] = self.count
        return HISTORY.encode(record)[0]

    @classmethod
    def unpack(cls, value: bytes) -> StoredHistory:
        """The numbers of a stored record; ValueError if it is not one of :data:`HISTORY`."""
        records, undecodable = HISTORY.decode([value])
        if undecodable[0]:
            raise ValueError("not a history record of the fraud pipeline")
        r = records[0]
        weight = float(r["mean_amount.weight"])
        mean = float(r["mean_amount.sum"]) / weight if weight else math.nan
        return cls(int(r["seen"]), mean, float(r["last_time"]), int(r["last_offset"]))


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
    nan = math.nan
    profile = {
        name: np.array([nan if p is None else p.get(name, nan) for p in profiles], np.float64)
        for name in PROFILE_FEATURES
    }
    numeric = numeric_features(
        np.asarray(amounts, dtype=np.float64),
        np.asarray(timestamps, dtype=np.float64),
        profile,
        history.count,
        history.mean_amount,
        history.seconds_since_last,
    )
    return RawFeatures(numeric, (channels, countries, currencies))


def numeric_features(
    amounts: Floats,
    timestamps: Floats,
    profile: Mapping[str, Floats],
    count: Floats,
    mean_amount: Floats,
    since_last: Floats,
) -> FloatArray:
    """The numeric features of a chunk (columns as in :data:`NUMERIC_FEATURES`), float32."""
    n = len(amounts)
    out = np.empty((n, len(NUMERIC_FEATURES)), dtype=np.float64)
    amount_log = np.log1p(amounts)
    angle = timestamps % _SECONDS_PER_DAY * (2 * math.pi / _SECONDS_PER_DAY)
    out[:, 0] = amount_log
    out[:, 1] = np.sin(angle)
    out[:, 2] = np.cos(angle)
    for column, name in ((3, "account_age_days"), (5, "avg_amount_30d"), (6, "txn_count_30d")):
        out[:, column] = np.log1p(np.maximum(profile[name], 0.0))
    out[:, 4] = profile["chargeback_rate"]
    out[:, 7] = np.log1p(count)
    out[:, 8] = np.log1p(np.maximum(mean_amount, 0.0))
    out[:, 9] = np.log1p(since_last)
    out[:, 10] = amount_log - out[:, 5]
    out[:, 11] = amount_log - out[:, 8]
    return out.astype(np.float32)


#: Codes of the channels; a country's or a currency's code is its letters read in base 26.
CHANNEL_CODES: dict[str, int] = {channel: i for i, channel in enumerate(CHANNELS)}
#: How many codes each categorical feature has (a code of -1 is a value outside them).
CODE_SPACES: tuple[int, ...] = (len(CHANNELS), 26**2, 26**3)
_LETTERS = {"country": 2, "currency": 3}


def letter_codes(values: Texts, width: int) -> Ints:
    """Each value's ``width`` upper-case ASCII letters read as a base-26 number; -1 for any
    other value (one C pass: the values as fixed-width UCS-4, read as integers)."""
    n = len(values)
    chars = np.array(values, dtype=f"U{width + 1}").view(np.uint32).reshape(n, width + 1)
    letters = chars[:, :width].astype(np.int64) - 65
    valid = ((letters >= 0) & (letters < 26)).all(axis=1) & (chars[:, width] == 0)
    codes = letters @ (26 ** np.arange(width - 1, -1, -1, dtype=np.int64))
    return np.where(valid, codes, -1)


def category_codes(name: str, values: Texts) -> Ints:
    """The codes of one categorical feature's values (-1 for a value outside its codes)."""
    if name == "channel":
        return np.fromiter(map(CHANNEL_CODES.get, values, repeat(-1)), np.int64, len(values))
    return letter_codes(values, _LETTERS[name])


def encode_categorical(
    channels: Texts,
    countries: Texts,
    currencies: Texts,
) -> Ints:
    """The categorical model input: ``(n, 3)`` int64 codes, in :data:`CATEGORICAL_FEATURES`
    order."""
    out = np.empty((len(channels), len(CATEGORICAL_FEATURES)), dtype=np.int64)
    for column, values in enumerate((channels, countries, currencies)):
        out[:, column] = category_codes(CATEGORICAL_FEATURES[column], values)
    return out


def features(batch: Batch) -> dict[str, np.ndarray]:
    """The pipeline's feature function: a chunk of events, each with the history before it,
    to the raw ``numeric`` features (NaN: unknown, the model imputes) and ``categorical``
    codes; each model's manifest says how it standardises and one-hot encodes them.
    Same columns as :func:`featurize` gives training (a test holds them equal)."""
    count, mean, since = (batch.state[name] for name in ("count", "mean_amount", "since_last"))
    if batch.unknown is not None and batch.unknown.any():
        # History that could not be read is unknown (imputed), not "never seen".
        count, mean, since = (np.where(batch.unknown, np.nan, a) for a in (count, mean, since))
    return {
        "numeric": numeric_features(
            batch.columns["amount"].astype(np.float64, copy=False),
            batch.time,
            batch.profile,
            count,
            mean,
            since,
        ),
        "categorical": encode_categorical(
            batch.columns["channel"], batch.columns["country"], batch.columns["currency"]
        ),
    }
