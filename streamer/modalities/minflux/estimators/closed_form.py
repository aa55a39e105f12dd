"""Closed-form per-tuple estimator: exact harmonic fit of the 3 counts of each axis.

Per axis the counts follow n_k = m0 - m1 cos(psi + K u_k) with u_k the beam offset from the
middle exposure. Three counts determine (m0, m1, psi) exactly; the background-corrected
visibility v = m1 / (m0 - b) gives d_a = (lambda / 2 pi) arccos(v / v0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import physics
from ..tuples import TupleBatch


def harmonic_fit(counts: np.ndarray, positions: np.ndarray,
                 dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-axis (m0, m1, psi), each (n, 2), from counts/positions (n, 2, 3); any 3 distinct positions.

    float32 (the model features) is ~25x faster for the trigonometry; float64 keeps the
    estimator exact near v = 1, where arccos amplifies rounding (~0.05 nm in float32).
    """
    c = counts.astype(dtype, copy=False)
    p = positions.astype(dtype, copy=False)
    h1 = p[..., 1] - p[..., 0]  # offset of the "-" exposure (positive for the standard pattern)
    h2 = p[..., 2] - p[..., 1]
    c1, s1 = np.cos(physics.K_NM * h1), np.sin(physics.K_NM * h1)
    c2, s2 = np.cos(physics.K_NM * h2), np.sin(physics.K_NM * h2)
    dm, dp = c[..., 0] - c[..., 1], c[..., 2] - c[..., 1]
    det = (1.0 - c1) * s2 + (1.0 - c2) * s1
    # n_k = m0 - P cos(K u_k) + Q sin(K u_k) with P = m1 cos psi, Q = m1 sin psi
    P = (dm * s2 + dp * s1) / det
    Q = (dp * (1.0 - c1) - dm * (1.0 - c2)) / det
    return c[..., 1] + P, np.hypot(P, Q), np.arctan2(Q, P)


def axis_visibility(counts: np.ndarray, positions: np.ndarray, background: float | np.ndarray) -> np.ndarray:
    """(n, 2) background-corrected visibility per axis (may exceed [0, 1] by noise)."""
    m0, m1, _ = harmonic_fit(counts, positions)
    b = np.asarray(background, dtype=float)
    if b.ndim == 1:
        b = b[:, None]
    denom = m0 - b
    return np.where(denom > 0, m1 / np.where(denom > 0, denom, 1.0), 0.0)


def axis_separations(counts, positions, background=1.0, v0=1.0) -> np.ndarray:
    """(n, 2) projected separations |d_x|, |d_y| in nm."""
    v = axis_visibility(counts, positions, background)
    v0 = np.asarray(v0, dtype=float)
    return physics.separation_from_visibility(v, v0[:, None] if v0.ndim == 1 else v0)


@dataclass
class ClosedFormEstimator:
    """d = hypot of the per-axis closed-form projected separations; background/v0 are calibration."""

    background: float = 1.0
    v0: float = 1.0
    name: str = "closed-form"

    def predict(self, batch: TupleBatch) -> np.ndarray:
        d_axes = axis_separations(batch.counts, batch.positions, self.background, self.v0)
        return np.hypot(d_axes[:, 0], d_axes[:, 1])
