"""A model's input spec (stored in its manifest) and the preprocessing it describes.

The spec names raw features of :mod:`pipelines.fraud.features` and says how to turn
them into the model's input matrix: impute, standardise and clip numerics
(with an optional missing-indicator column), one-hot categoricals with one
extra slot for values outside the vocabulary. A spec naming a feature the
pipeline does not compute is refused when it is read, so an incompatible
model fails at load time rather than on the first batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.fraud.features import (
    CATEGORICAL_FEATURES,
    CODE_SPACES,
    NUMERIC_FEATURES,
    FloatArray,
    Ints,
    RawFeatures,
    category_codes,
)

__all__ = [
    "STD_FLOOR",
    "CategoricalInput",
    "InputSpec",
    "NumericInput",
    "Preprocessor",
    "fit_spec",
]

#: Smallest standard deviation a spec uses, so a constant column cannot divide by ~0.
STD_FLOOR = 1e-3

Finite = Annotated[float, Field(allow_inf_nan=False)]
_SPEC = ConfigDict(frozen=True, extra="forbid")


class NumericInput(BaseModel):
    """One numeric input column: ``clip((x or impute - mean) / std)``, plus maybe a flag."""

    model_config = _SPEC

    name: str
    mean: Finite
    std: Annotated[float, Field(ge=STD_FLOOR, allow_inf_nan=False)]
    impute: Finite
    indicator: bool = Field(description="add a 0/1 column that is 1 when the value was missing")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in NUMERIC_FEATURES:
            raise ValueError(
                f"unknown numeric feature {name!r}; the feature pipeline computes "
                + ", ".join(NUMERIC_FEATURES)
            )
        return name


class CategoricalInput(BaseModel):
    """One categorical input: one column per vocabulary value, then one for any other value."""

    model_config = _SPEC

    name: str
    vocabulary: tuple[str, ...] = Field(max_length=10_000)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in CATEGORICAL_FEATURES:
            raise ValueError(
                f"unknown categorical feature {name!r}; the feature pipeline computes "
                + ", ".join(CATEGORICAL_FEATURES)
            )
        return name

    @field_validator("vocabulary")
    @classmethod
    def _unique(cls, vocabulary: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("vocabulary has duplicate values")
        return vocabulary


class InputSpec(BaseModel):
    """How raw features become the model's input matrix (part of a model's manifest)."""

    model_config = _SPEC

    numeric: tuple[NumericInput, ...]
    categorical: tuple[CategoricalInput, ...] = ()
    clip: float = Field(10.0, gt=0, allow_inf_nan=False, description="bound of standardised values")

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        for kind, names in (
            ("numeric", [f.name for f in self.numeric]),
            ("categorical", [f.name for f in self.categorical]),
        ):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{kind} feature(s) listed twice: {', '.join(twice)}")
        if not self.numeric and not self.categorical:
            raise ValueError("the spec has no features")
        return self

    @property
    def width(self) -> int:
        """Number of columns of the model input."""
        return len(self.columns())

    def columns(self) -> list[str]:
        """Names of the model input columns, in order (for reports and debugging)."""
        names = [f.name for f in self.numeric]
        names += [f"missing:{f.name}" for f in self.numeric if f.indicator]
        for cat in self.categorical:
            names += [f"{cat.name}={v}" for v in cat.vocabulary] + [f"{cat.name}=<other>"]
        return names


def fit_spec(
    raw: RawFeatures,
    numeric: Sequence[str] = NUMERIC_FEATURES,
    max_vocab: int = 24,
    *,
    categorical: Sequence[str] = CATEGORICAL_FEATURES,
    min_count: int = 20,
    clip: float = 10.0,
) -> InputSpec:
    """Fit a spec on training rows.

    Impute with the median of the observed (finite) values, then take mean and
    std after imputation, so serving sees the distribution the model saw. A
    missing indicator is added for every column that had a missing value.
    The vocabulary keeps the ``max_vocab`` most frequent values seen at least
    ``min_count`` times (ties broken by value, so fitting is deterministic).
    """
    if len(raw) == 0:
        raise ValueError("cannot fit an input spec on zero rows")
    numeric_inputs = []
    for name in numeric:
        if name not in NUMERIC_FEATURES:
            raise ValueError(f"unknown numeric feature {name!r}")
        column = raw.numeric[:, NUMERIC_FEATURES.index(name)].astype(np.float64)
        observed = np.isfinite(column)
        impute = float(np.median(column[observed])) if observed.any() else 0.0
        filled = np.where(observed, column, impute)
        numeric_inputs.append(
            NumericInput(
                name=name,
                mean=float(filled.mean()),
                std=max(float(filled.std()), STD_FLOOR),
                impute=impute,
                indicator=not bool(observed.all()),
            )
        )
    categorical_inputs = []
    for name in categorical:
        if name not in CATEGORICAL_FEATURES:
            raise ValueError(f"unknown categorical feature {name!r}")
        counts = Counter(raw.categorical[CATEGORICAL_FEATURES.index(name)])
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        vocabulary = tuple(value for value, count in ranked[:max_vocab] if count >= min_count)
        categorical_inputs.append(CategoricalInput(name=name, vocabulary=vocabulary))
    return InputSpec(
        numeric=tuple(numeric_inputs), categorical=tuple(categorical_inputs), clip=clip
    )


class Preprocessor:
    """Applies an :class:`InputSpec` to raw features (vectorised; never emits NaN).

    Categorical values arrive as codes (:func:`pipelines.fraud.features.category_codes`);
    each vocabulary becomes a table from code to one-hot slot, so a chunk's slots are
    one array lookup per feature.
    """

    __slots__ = ("_columns", "_impute", "_indicators", "_lookups", "_mean", "_std", "spec")

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self._columns = np.array([NUMERIC_FEATURES.index(f.name) for f in spec.numeric], np.intp)
        self._mean = np.array([f.mean for f in spec.numeric], dtype=np.float64)
        self._std = np.array([f.std for f in spec.numeric], dtype=np.float64)
        self._impute = np.array([f.impute for f in spec.numeric], dtype=np.float64)
        self._indicators = np.array(
            [i for i, f in enumerate(spec.numeric) if f.indicator], dtype=np.intp
        )
        self._lookups: list[tuple[int, npt.NDArray[np.intp]]] = []
        for cat in spec.categorical:
            feature = CATEGORICAL_FEATURES.index(cat.name)
            other = len(cat.vocabulary)
            # One slot per code, and a last one for code -1 (a value outside every code).
            table = np.full(CODE_SPACES[feature] + 1, other, dtype=np.intp)
            codes = category_codes(cat.name, list(cat.vocabulary))
            for slot, code in enumerate(codes.tolist()):
                if code >= 0:  # a vocabulary value no event can have never matches
                    table[code] = slot
            self._lookups.append((feature, table))

    @property
    def width(self) -> int:
        return self.spec.width

    def transform(self, raw: RawFeatures) -> FloatArray:
        """The model input for ``raw`` (categorical values as text): float32 ``(n, width)``."""
        n = len(raw)
        self._check_numeric(raw.numeric)
        if len(raw.categorical) != len(CATEGORICAL_FEATURES) or any(
            len(values) != n for values in raw.categorical
        ):
            raise ValueError(
                f"raw categorical features must be {len(CATEGORICAL_FEATURES)} lists of {n} values"
            )
        codes = np.empty((n, len(CATEGORICAL_FEATURES)), dtype=np.int64)
        for feature, values in enumerate(raw.categorical):
            codes[:, feature] = category_codes(CATEGORICAL_FEATURES[feature], values)
        return self.transform_coded(raw.numeric, codes)

    @staticmethod
    def _check_numeric(numeric: FloatArray) -> None:
        if numeric.ndim != 2 or numeric.shape[1] != len(NUMERIC_FEATURES):
            raise ValueError(
                f"raw numeric features have shape {numeric.shape}, "
                f"expected (n, {len(NUMERIC_FEATURES)})"
            )

    def transform_coded(self, numeric: FloatArray, codes: Ints) -> FloatArray:
        """The model input for numeric features and categorical codes: float32 ``(n, width)``.

        NaN and infinities count as missing: they are imputed (and flagged), so
        any input gives finite output.
        """
        n = len(numeric)
        self._check_numeric(numeric)
        if codes.shape != (n, len(CATEGORICAL_FEATURES)):
            raise ValueError(
                f"categorical codes have shape {codes.shape}, "
                f"expected ({n}, {len(CATEGORICAL_FEATURES)})"
            )
        out = np.zeros((n, self.width), dtype=np.float32)
        k = len(self._columns)
        values = numeric[:, self._columns].astype(np.float64)
        missing = ~np.isfinite(values)
        values = np.where(missing, self._impute, values)
        scaled = (values - self._mean) / self._std
        out[:, :k] = np.clip(scaled, -self.spec.clip, self.spec.clip)
        start = k + len(self._indicators)
        out[:, k:start] = missing[:, self._indicators]
        rows = np.arange(n)
        for feature, table in self._lookups:
            column = codes[:, feature]
            # A code outside the table (never made by category_codes) counts as -1.
            column = np.where((column >= 0) & (column < len(table) - 1), column, -1)
            out[rows, start + table[column]] = 1.0
            start += int(table[-1]) + 1
        return out
