"""The unit of data everywhere downstream: a batch of MINFLUX tuples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def count_totals(counts: np.ndarray) -> np.ndarray:
    """(n,) float64 total of each tuple's counts (n, 2, 3). Integer counts sum exactly in any order
    (far below 2**53), so a matrix product with ones replaces numpy's reduction over two short axes
    (~3x faster per packet)."""
    c = np.asarray(counts)
    if c.dtype.kind in "iu":
        k = int(np.prod(c.shape[1:]))
        return c.reshape(len(c), k).astype(np.float64) @ np.ones(k)
    return c.sum(axis=(1, 2), dtype=np.float64)


@dataclass(frozen=True)
class TupleBatch:
    """n tuples: photon counts and the beam positions they were measured at.

    counts: (n, 2, 3) uint16, axis x then y, exposures at centre-L/2, centre, centre+L/2.
    positions: (n, 2, 3) float32 absolute beam-minimum positions in nm.
    trace_id: (n,) int64 ruler / trace the tuple belongs to (-1 when unknown).
    time_s: (n,) float64 acquisition time of the tuple (NaN when unknown).
    """

    counts: np.ndarray
    positions: np.ndarray
    trace_id: np.ndarray
    time_s: np.ndarray

    @classmethod
    def build(
        cls,
        counts: np.ndarray,
        positions: np.ndarray,
        trace_id: np.ndarray | None = None,
        time_s: np.ndarray | None = None,
    ) -> "TupleBatch":
        n = len(counts)
        return cls(
            counts=np.asarray(counts).reshape(n, 2, 3),
            positions=np.asarray(positions).reshape(n, 2, 3),
            trace_id=np.full(n, -1, np.int64) if trace_id is None else np.asarray(trace_id, np.int64),
            time_s=np.full(n, np.nan) if time_s is None else np.asarray(time_s, np.float64),
        )

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, idx) -> "TupleBatch":
        return TupleBatch(self.counts[idx], self.positions[idx], self.trace_id[idx], self.time_s[idx])

    @property
    def centre(self) -> np.ndarray:
        """(n, 2) centre of each axis' pattern (the middle exposure)."""
        return self.positions[:, :, 1]

    @property
    def photons(self) -> np.ndarray:
        """(n,) total photons of each tuple."""
        if self.counts.dtype.kind in "iu":
            return count_totals(self.counts).astype(np.int64)
        return self.counts.sum(axis=(1, 2), dtype=np.int64)


def half_l_of(positions: np.ndarray) -> np.ndarray:
    """(n,) L/2 of each tuple from its beam positions (mean over both axes)."""
    p = positions.astype(np.float32, copy=False)
    w = p[..., 2] - p[..., 0]
    # = w.mean(axis=1) * 0.5 bit for bit (float32 mean of two is (a + b) / 2; halving is exact), 4x faster
    return (w[:, 0] + w[:, 1]) * np.float32(0.5) * np.float32(0.5)
