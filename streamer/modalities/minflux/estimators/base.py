"""One interface for every distance estimator, so benchmarks compare them on identical data."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..tuples import TupleBatch


@runtime_checkable
class Estimator(Protocol):
    """Maps a batch of tuples to one separation estimate (nm) per tuple, vectorized."""

    name: str

    def predict(self, batch: TupleBatch) -> np.ndarray:
        """(n,) float distance estimates in nm."""
        ...
