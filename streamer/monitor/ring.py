"""Fixed-capacity ring buffer of named numpy columns (the monitor's bounded memory)."""

from __future__ import annotations

import numpy as np


class RingColumns:
    """Keeps the newest ``capacity`` rows of several same-length columns.

    ``push`` copies a block with at most two slice assignments per column (no per-row Python),
    and a block larger than the capacity keeps only its tail, so memory never grows.
    """

    def __init__(self, capacity: int, dtypes: dict[str, np.dtype | type | tuple]) -> None:
        """``dtypes``: column name -> dtype, or (dtype, row shape) for a column whose rows are arrays."""
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._cols = {name: (np.zeros((self.capacity, *dt[1]), dt[0]) if isinstance(dt, tuple)
                             else np.zeros(self.capacity, dt)) for name, dt in dtypes.items()}
        self._head = 0  # next write position
        self._size = 0
        self.total = 0  # rows ever pushed

    def __len__(self) -> int:
        return self._size

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._cols)

    def clear(self) -> None:
        self._head = self._size = 0

    def push(self, **columns: np.ndarray) -> None:
        """Append equal-length columns (every column of the ring must be given)."""
        if set(columns) != set(self._cols):
            raise ValueError(f"push needs columns {sorted(self._cols)}, got {sorted(columns)}")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns differ in length: { {k: len(v) for k, v in columns.items()} }")
        n = lengths.pop()
        if n == 0:
            return
        self.total += n
        start = 0
        if n > self.capacity:  # only the tail survives
            start, n = n - self.capacity, self.capacity
        first = min(n, self.capacity - self._head)
        for name, col in self._cols.items():
            src = columns[name]
            col[self._head:self._head + first] = src[start:start + first]
            if first < n:
                col[:n - first] = src[start + first:start + n]
        self._head = (self._head + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def column(self, name: str, last: int | None = None) -> np.ndarray:
        """The newest ``last`` rows (all when None) of one column, oldest first (a copy)."""
        col = self._cols[name]
        k = self._size if last is None else max(0, min(int(last), self._size))
        start = (self._head - k) % self.capacity
        if start + k <= self.capacity:
            return col[start:start + k].copy()
        return np.concatenate((col[start:], col[:self._head]))

    def columns(self, last: int | None = None) -> dict[str, np.ndarray]:
        return {name: self.column(name, last) for name in self._cols}
