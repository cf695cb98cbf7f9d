"""A batch of named model inputs: the form every declared pipeline's model is fed.

The scoring stages only ever slice, subset and join a batch (the batcher
splits and gathers parts, the ladder and router take rows); this is that,
for a dict of arrays with one row per event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, Self

import numpy as np

__all__ = ["ModelInput", "NamedInputs"]


class ModelInput(Protocol):
    """What the scoring stages do with a batch of model input, whatever its form."""

    def __len__(self) -> int: ...
    def take(self, start: int, stop: int) -> Self: ...
    def select(self, rows: Sequence[int]) -> Self: ...
    @classmethod
    def concat(cls, parts: Sequence[Self]) -> Self: ...


@dataclass(frozen=True, slots=True)
class NamedInputs:
    """Named arrays, each ``(n, ...)``: row ``i`` of every array is event ``i``."""

    arrays: Mapping[str, np.ndarray]
    n: int

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> NamedInputs:
        sizes = {len(a) for a in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"inputs of different lengths: {sorted(sizes)}")
        return cls(dict(arrays), sizes.pop())

    def __len__(self) -> int:
        return self.n

    def take(self, start: int, stop: int) -> NamedInputs:
        stop = min(stop, self.n)
        return NamedInputs({k: v[start:stop] for k, v in self.arrays.items()}, max(0, stop - start))

    def select(self, rows: Sequence[int] | np.ndarray) -> NamedInputs:
        """The given rows, in the given order."""
        index = np.asarray(rows, dtype=np.intp)
        return NamedInputs({k: v[index] for k, v in self.arrays.items()}, len(index))

    @classmethod
    def concat(cls, parts: Sequence[NamedInputs]) -> NamedInputs:
        if len(parts) == 1:
            return parts[0]
        names = parts[0].arrays.keys()
        return cls(
            {k: np.concatenate([p.arrays[k] for p in parts]) for k in names},
            sum(p.n for p in parts),
        )
