"""Deterministic synthetic transactions with a learnable fraud pattern.

The packaged default model is trained on this data, and demos and tests feed
it to the worker. Every draw comes from a numpy ``Generator`` seeded with the
world's seed, so the same seed gives the same world in every process.

Labels are drawn from a risk score computed with :func:`pipelines.fraud.features.roll`
and :func:`pipelines.fraud.features.featurize` on the entity's *true* profile: young
accounts, chargebacks, amounts far above the usual, bursts seconds apart,
night hours, web/app, foreign and rare countries. The model sees the same
quantities (with some profile features withheld), and the Bernoulli draw is
the label noise that keeps a good model short of a perfect score.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import orjson

from pipelines.fraud.features import NUMERIC_FEATURES, PROFILE_FEATURES, featurize, roll

__all__ = ["MALFORMED_KINDS", "LabeledEvent", "SyntheticWorld", "malformed_values"]

# (country, currency, share of home countries)
_MAIN: tuple[tuple[str, str, float], ...] = (
    ("US", "USD", 0.34), ("GB", "GBP", 0.12), ("DE", "EUR", 0.10), ("FR", "EUR", 0.08),
    ("ES", "EUR", 0.05), ("IT", "EUR", 0.05), ("NL", "EUR", 0.04), ("CA", "CAD", 0.05),
    ("AU", "AUD", 0.04), ("JP", "JPY", 0.04), ("BR", "BRL", 0.03), ("MX", "MXN", 0.03),
    ("IN", "INR", 0.03),
)  # fmt: skip
# The long tail: nobody lives there, travellers and fraudsters show up. The first
# _HIGH_RISK are where compromised accounts are used most.
_TAIL: tuple[tuple[str, str], ...] = (
    ("NG", "NGN"), ("RO", "RON"), ("UA", "UAH"), ("VN", "VND"), ("PH", "PHP"), ("ID", "IDR"),
    ("TR", "TRY"), ("PK", "PKR"), ("BD", "BDT"), ("EG", "EGP"), ("KE", "KES"), ("GH", "GHS"),
    ("CO", "COP"), ("PE", "PEN"), ("AR", "ARS"), ("CL", "CLP"), ("TH", "THB"), ("MY", "MYR"),
    ("ZA", "ZAR"), ("MA", "MAD"), ("DZ", "DZD"), ("KZ", "KZT"), ("BY", "BYN"), ("RS", "RSD"),
    ("BG", "BGN"), ("HR", "EUR"), ("LT", "EUR"), ("LV", "EUR"), ("GE", "GEL"), ("AM", "AMD"),
    ("MD", "MDL"), ("AL", "ALL"), ("BA", "BAM"), ("MK", "MKD"), ("IS", "ISK"),
)  # fmt: skip
_HIGH_RISK = 6
_COUNTRIES = tuple(c for c, _, _ in _MAIN) + tuple(c for c, _ in _TAIL)
_CURRENCIES = tuple(dict.fromkeys([c for _, c, _ in _MAIN] + [c for _, c in _TAIL]))
_LOCAL_CURRENCY = np.array(
    [_CURRENCIES.index(c) for _, c, _ in _MAIN] + [_CURRENCIES.index(c) for _, c in _TAIL]
)
_USD = _CURRENCIES.index("USD")
_MAIN_P = np.array([p for _, _, p in _MAIN])
_TAIL_P = 1.0 / np.arange(1, len(_TAIL) + 1) ** 0.8
_TAIL_P /= _TAIL_P.sum()
_FRAUD_TAIL_P = _TAIL_P * np.where(np.arange(len(_TAIL)) < _HIGH_RISK, 6.0, 1.0)
_FRAUD_TAIL_P /= _FRAUD_TAIL_P.sum()
_CHANNELS = ("pos", "web", "app")
_N_MERCHANTS = 400
_MERCHANT_P = 1.0 / np.arange(1, _N_MERCHANTS + 1) ** 0.9
_MERCHANT_P /= _MERCHANT_P.sum()
_DAY = 86_400.0

# Risk score (a logit); see _risk_logit. The intercept sets the base fraud rate.
_INTERCEPT = -6.9
_CHANNEL_RISK = np.array([-0.8, 0.6, 0.4])  # pos, web, app
_COL = {name: i for i, name in enumerate(NUMERIC_FEATURES)}

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
_Candidates = tuple[IntArray, FloatArray, FloatArray, IntArray, IntArray, IntArray]
_Mutation = Callable[[dict[str, object]], bytes]


@dataclass(frozen=True, slots=True)
class LabeledEvent:
    """One event as a producer publishes it, and whether it is fraud (not on the wire)."""

    event: dict[str, object]
    is_fraud: bool


class SyntheticWorld:
    """A population of accounts and an endless, reproducible stream of their transactions.

    ``events`` continues where the previous call stopped (later timestamps, new
    ids), so a demo can publish in rounds; the history that labels depend on is
    carried across calls exactly as the worker's aggregates table would be.
    """

    def __init__(
        self, seed: int, n_entities: int = 1000, start_ts: float = 1_763_769_600.0
    ) -> None:
        if n_entities < 1:
            raise ValueError("n_entities must be at least 1")
        self.seed = seed
        self.n_entities = n_entities
        entity_rng, self._rng = np.random.default_rng(seed).spawn(2)
        self._make_entities(entity_rng)
        self._clock = float(start_ts)
        self._next_offset = 0
        self._aggregates: dict[str, bytes | None] = {}
        # Base events arrive every few seconds overall, every few hours per account.
        self._mean_gap = 6 * 3600.0 / n_entities

    def _make_entities(self, rng: np.random.Generator) -> None:
        n = self.n_entities
        self._ids = [f"acct-{i:06d}" for i in range(n)]
        young = rng.random(n) < 0.12
        age = np.where(young, rng.integers(0, 90, n), 90 + rng.gamma(1.6, 600.0, n))
        age = np.minimum(age, 4000).astype(np.int64)
        risky = rng.random(n) < 0.06
        chargeback = np.where(risky, rng.beta(2.0, 12.0, n), rng.beta(0.5, 60.0, n))
        chargeback = np.round(np.clip(chargeback, 0.0, 0.3), 4)
        self._typical = np.clip(rng.lognormal(math.log(40.0), 0.8, n), 2.0, 3000.0)
        avg30 = np.round(self._typical * math.exp(0.125) * rng.lognormal(0.0, 0.1, n), 2)
        activity = rng.lognormal(0.0, 0.7, n)
        activity /= activity.sum()
        self._activity_p = activity
        count30 = rng.poisson(20.0 * n * activity)
        self._home = rng.choice(len(_MAIN), n, p=_MAIN_P)
        self._channel_cum = rng.dirichlet([3.0, 2.0, 1.2], n).cumsum(axis=1)[:, :-1]
        risk = 1.0 + 4.0 * (age < 90) + 30.0 * chargeback
        self._risk_p = risk / risk.sum()

        self._truth: list[dict[str, float]] = []
        self._profiles: list[dict[str, object]] = []
        self._table: dict[str, dict[str, float]] = {}
        no_profile = rng.random(n) < 0.03
        partial = rng.random(n) < 0.10
        drop = rng.random((n, len(PROFILE_FEATURES))) < 0.4
        drop[np.arange(n), rng.integers(0, len(PROFILE_FEATURES), n)] = True
        rows = zip(age.tolist(), chargeback.tolist(), avg30.tolist(), count30.tolist(), strict=True)
        for i, values in enumerate(rows):
            self._truth.append({k: float(v) for k, v in zip(PROFILE_FEATURES, values, strict=True)})
            if no_profile[i]:
                continue
            known = {
                name: value
                for j, (name, value) in enumerate(zip(PROFILE_FEATURES, values, strict=True))
                if not (partial[i] and drop[i, j])
            }
            self._profiles.append({"entity_id": self._ids[i], **known})
            self._table[self._ids[i]] = {name: float(value) for name, value in known.items()}

    def entity_ids(self) -> list[str]:
        return list(self._ids)

    def profiles(self) -> list[dict[str, object]]:
        """Feature updates as published on the features topic (some entities have none)."""
        return [dict(p) for p in self._profiles]

    def feature_table(self) -> dict[str, dict[str, float]]:
        """The profiles as the worker's features table holds them (known features only)."""
        return {entity: dict(features) for entity, features in self._table.items()}

    def events(self, n: int) -> list[LabeledEvent]:
        """The next ``n`` events of the stream, in time order, with their labels."""
        if n < 0:
            raise ValueError("n must be non-negative")
        if n == 0:
            return []
        ent, ts, amount, country, currency, channel = self._draw(n)
        order = np.argsort(ts, kind="stable")[:n]
        ent, amount, country = ent[order], amount[order], country[order]
        currency, channel = currency[order], channel[order]
        ts = np.round(ts[order], 3)  # rounding is monotone: order is kept
        foreign = country != self._home[ent]
        merchant = self._rng.choice(_N_MERCHANTS, n, p=_MERCHANT_P)

        ids = [self._ids[i] for i in ent.tolist()]
        amounts = np.round(amount, 2).tolist()
        stamps = ts.tolist()
        channels = [_CHANNELS[i] for i in channel.tolist()]
        countries = [_COUNTRIES[i] for i in country.tolist()]
        currencies = [_CURRENCIES[i] for i in currency.tolist()]
        offsets = range(self._next_offset, self._next_offset + n)
        history = roll(ids, amounts, stamps, offsets, self._aggregates)
        truth = [self._truth[i] for i in ent.tolist()]
        raw = featurize(amounts, stamps, channels, countries, currencies, truth, history)
        logit = _risk_logit(raw.numeric.astype(np.float64), channel, country, foreign)
        fraud = self._rng.random(n) < 1.0 / (1.0 + np.exp(-logit))

        self._aggregates.update(history.final)
        self._clock = float(stamps[-1])
        out = []
        for k, merchant_i in enumerate(merchant.tolist()):
            event: dict[str, object] = {
                "event_id": f"e-{self._next_offset + k + 1:07d}",
                "entity_id": ids[k],
                "ts": stamps[k],
                "amount": amounts[k],
                "currency": currencies[k],
                "merchant": f"m-{merchant_i:04d}",
                "country": countries[k],
                "channel": channels[k],
            }
            out.append(LabeledEvent(event, bool(fraud[k])))
        self._next_offset += n
        return out

    def _draw(self, n: int) -> _Candidates:
        """At least ``n`` unsorted candidate events: ordinary ones plus fraud incidents."""
        rng = self._rng
        # Ordinary activity, three times slower during the night (00:00-06:00 UTC).
        gaps = rng.exponential(self._mean_gap, n).tolist()
        stamps = []
        t = self._clock
        for gap in gaps:
            t += gap * (3.0 if t % _DAY < 6 * 3600 else 1.0)
            stamps.append(t)
        ts = np.asarray(stamps)
        ent = rng.choice(self.n_entities, n, p=self._activity_p)
        amount = self._typical[ent] * rng.lognormal(0.0, 0.5, n)
        channel = (rng.random(n)[:, None] > self._channel_cum[ent]).sum(axis=1)
        country = self._home[ent].copy()
        r = rng.random(n)
        abroad, tail = r < 0.045, (r >= 0.045) & (r < 0.06)
        country[abroad] = rng.choice(len(_MAIN), int(abroad.sum()), p=_MAIN_P)
        country[tail] = len(_MAIN) + rng.choice(len(_TAIL), int(tail.sum()), p=_TAIL_P)
        currency = _LOCAL_CURRENCY[country]
        u = rng.random(n)
        home_currency = _LOCAL_CURRENCY[self._home[ent]]
        away = country != self._home[ent]
        currency = np.where(away & (u < 0.2), home_currency, currency)
        currency = np.where((away & (u >= 0.2) & (u < 0.3)) | (~away & (u < 0.02)), _USD, currency)

        # Fraud incidents: a risky account is taken over and used in a burst.
        k = int(rng.binomial(n, 0.025))
        victim = rng.choice(self.n_entities, k, p=self._risk_p)
        start = ts[rng.integers(0, n, k)]
        night = rng.random(k) < 0.4
        to_night = (_DAY - start % _DAY) % _DAY + rng.uniform(0.0, 5 * 3600.0, k)
        start = np.where(night, start + to_night, start)
        size = np.minimum(rng.geometric(0.4, k), 6)
        group = np.repeat(np.arange(k), size)
        step = rng.uniform(2.0, 90.0, group.size)
        first = np.cumsum(size) - size  # index of each burst's first event
        step[first] = 0.0
        csum = np.cumsum(step)
        burst_ts = start[group] + csum - csum[first][group]
        burst_ent = victim[group]
        spike = rng.random(group.size) < 0.75
        burst_amount = self._typical[burst_ent] * np.where(
            spike, rng.lognormal(2.0, 0.8, group.size), rng.lognormal(0.0, 0.5, group.size)
        )
        r = rng.random(k)
        burst_country = self._home[victim].copy()
        far, near = r < 0.45, (r >= 0.45) & (r < 0.65)
        burst_country[far] = len(_MAIN) + rng.choice(len(_TAIL), int(far.sum()), p=_FRAUD_TAIL_P)
        burst_country[near] = rng.choice(len(_MAIN), int(near.sum()), p=_MAIN_P)
        burst_country = burst_country[group]
        burst_currency = np.where(
            rng.random(group.size) < 0.8, _LOCAL_CURRENCY[burst_country], _USD
        )
        burst_channel = rng.choice(3, k, p=[0.08, 0.57, 0.35])[group]
        return (
            np.concatenate([ent, burst_ent]),
            np.concatenate([ts, burst_ts]),
            np.clip(np.concatenate([amount, burst_amount]), 0.5, 50_000.0),
            np.concatenate([country, burst_country]),
            np.concatenate([currency, burst_currency]),
            np.concatenate([channel, burst_channel]),
        )


def _risk_logit(
    numeric: FloatArray, channel: IntArray, country: IntArray, foreign: npt.NDArray[np.bool_]
) -> FloatArray:
    """The fraud logit of each event, from its (true-profile) raw features."""

    def col(name: str) -> FloatArray:
        return np.nan_to_num(numeric[:, _COL[name]], nan=0.0)

    c = _COL
    young = np.maximum(0.0, math.log1p(365.0) - numeric[:, c["account_age_days_log"]])
    spike_30d = np.clip(numeric[:, c["amount_vs_avg_30d"]] - 0.7, 0.0, 4.0)
    spike_history = np.clip(col("amount_vs_history") - 0.7, 0.0, 4.0)
    since = numeric[:, c["seconds_since_last_log"]]
    velocity = np.where(np.isnan(since), 0.0, np.maximum(0.0, math.log1p(300.0) - since))
    # Night: within about four hours of 03:00 UTC.
    center = 3 * 2 * math.pi / 24
    closeness = col("hour_cos") * math.cos(center) + col("hour_sin") * math.sin(center)
    night = np.maximum(0.0, closeness - 0.5) * 2.0
    is_tail = country >= len(_MAIN)
    high_risk = is_tail & (country < len(_MAIN) + _HIGH_RISK)
    first_seen = numeric[:, c["history_count_log"]] == 0.0
    return np.asarray(
        _INTERCEPT
        + 0.5 * young
        + 12.0 * col("chargeback_rate")
        + 1.6 * spike_30d
        + 1.0 * spike_history
        + 0.8 * velocity
        + 1.2 * night
        + _CHANNEL_RISK[channel]
        + 0.8 * foreign
        + 1.2 * is_tail
        + 0.8 * high_risk
        + 0.4 * first_seen,
        dtype=np.float64,
    )


def malformed_values(rng_or_seed: np.random.Generator | int, n: int) -> list[bytes]:
    """``n`` event payloads that must each become a dead letter, of varied kinds.

    Kinds are dealt round-robin in a shuffled order, so any ``n`` at least
    :data:`MALFORMED_KINDS` long contains each kind.
    """
    rng = (
        rng_or_seed
        if isinstance(rng_or_seed, np.random.Generator)
        else np.random.default_rng(rng_or_seed)
    )
    kinds = rng.permutation(len(_MALFORMED)).tolist()
    out = []
    for i in range(n):
        serial = int(rng.integers(0, 10_000_000))
        base: dict[str, object] = {
            "event_id": f"bad-{serial:07d}",
            "entity_id": f"acct-{serial % 1000:06d}",
            "ts": 1_763_769_600.0 + serial / 10,
            "amount": round(float(rng.uniform(1.0, 500.0)), 2),
            "currency": "USD",
            "merchant": f"m-{serial % _N_MERCHANTS:04d}",
            "country": "US",
            "channel": _CHANNELS[serial % 3],
        }
        out.append(_MALFORMED[kinds[i % len(kinds)]](base))
    return out


def _dumps(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _with(**changes: object) -> _Mutation:
    return lambda e: _dumps({**e, **changes})


def _without(field: str) -> _Mutation:
    return lambda e: _dumps({k: v for k, v in e.items() if k != field})


def _truncated(e: dict[str, object]) -> bytes:
    text = _dumps(e)
    return text[: len(text) // 2]


def _not_utf8(e: dict[str, object]) -> bytes:
    return _dumps(e).replace(b'"US"', b'"\xff\xfe"')


_MALFORMED: tuple[_Mutation, ...] = (
    _truncated,  # invalid JSON
    lambda e: b"not json at all",
    lambda e: _dumps([e]),  # an array, not an object
    lambda e: b"42",  # a bare number
    lambda e: b"{}",
    _not_utf8,
    _with(amount="12.50"),  # a number as a string
    _with(amount=-12.5),
    _with(amount=float("nan")),  # the NaN literal
    _with(ts=float("inf")),  # the Infinity literal
    _with(amount=None),
    _with(amount=True),
    _with(ts="2025-11-22T00:00:00Z"),
    _with(currency="usd"),
    _with(country="USA"),
    _with(channel="fax"),
    _with(channel=1),
    _with(entity_id=""),
    _without("entity_id"),
    _without("amount"),
)

#: How many kinds of malformed payload :func:`malformed_values` deals.
MALFORMED_KINDS = len(_MALFORMED)


class SyntheticTraffic:
    """The world as the pipeline's :class:`~streams.pipeline.Traffic`: JSON records."""

    def __init__(self, entities: int, seed: int) -> None:
        self.world = SyntheticWorld(seed=seed, n_entities=entities)

    def profiles(self) -> list[tuple[bytes, bytes]]:
        return [(str(p["entity_id"]).encode(), orjson.dumps(p)) for p in self.world.profiles()]

    def events(self, n: int) -> list[tuple[bytes, bytes]]:
        return [
            (str(item.event["entity_id"]).encode(), orjson.dumps(item.event))
            for item in self.world.events(n)
        ]

    def malformed(self, n: int, seed: int) -> list[bytes]:
        return malformed_values(seed, n)
