"""Per-event features for the entry-point model, in a canonical orientation.

Normal incidence makes the physics invariant under the 8 symmetries of the square pixel grid, so
each window is flipped/transposed so that its thresholded charge centroid lies in the octant
``dx >= dy >= 0`` (relative to the peak pixel); the model predicts the entry offset in that frame
and the prediction is mapped back. This divides what the trees must learn by eight.

Features (all in electrons / pixels): the central 7x7 pixels of the canonical window; 3x3 and 5x5
centroids (with and without the 40 e- threshold); thresholded window moments (centroid, second
moments, elongation), total charge and pixel count above threshold, the peak and 3x3 charge, the
charge in Chebyshev rings 0..R, and the offset of the farthest pixel above threshold.
"""

from __future__ import annotations

import numpy as np

from . import fast as _fast
from .detect import THRESHOLD_E, _gather, centroid

RAW_HALF = 3


def canonical(win: np.ndarray, threshold: float = THRESHOLD_E):
    """Canonical windows and the symmetry (flip_x, flip_y, transpose) that produced them."""
    r = win.shape[-1] // 2
    k = np.arange(-r, r + 1, dtype=np.float32)
    wt = np.where(win > threshold, win, 0.0)
    tot = np.maximum(wt.sum(axis=(1, 2)), 1e-6)
    mx = (wt.sum(axis=1) * k).sum(axis=1) / tot
    my = (wt.sum(axis=2) * k).sum(axis=1) / tot
    fx, fy = mx < 0, my < 0
    out = win.copy()
    out[fx] = out[fx][:, :, ::-1]
    out[fy] = out[fy][:, ::-1, :]
    tr = np.abs(my) > np.abs(mx)
    out[tr] = np.swapaxes(out[tr], 1, 2)
    return out, fx, fy, tr


def to_canonical(dx, dy, fx, fy, tr):
    """Map frame offsets into the canonical frame (flip first, then transpose)."""
    dx = np.where(fx, -dx, dx)
    dy = np.where(fy, -dy, dy)
    return np.where(tr, dy, dx), np.where(tr, dx, dy)


def from_canonical(cx, cy, fx, fy, tr):
    """Inverse of :func:`to_canonical`."""
    dx, dy = np.where(tr, cy, cx), np.where(tr, cx, cy)
    return np.where(fx, -dx, dx), np.where(fy, -dy, dy)


def feature_names(r: int) -> list[str]:
    raw = [f"p{i - RAW_HALF}_{j - RAW_HALF}" for i in range(2 * RAW_HALF + 1) for j in range(2 * RAW_HALF + 1)]
    cents = [f"{a}{s}" for s in ("c3", "c3t", "c5", "c5t") for a in ("x", "y")]
    mom = ["mx", "my", "sxx", "syy", "sxy", "elong", "q_th", "npix_th", "peak", "box3", "far_x", "far_y", "far_d"]
    rings = [f"ring{i}" for i in range(r + 1)]
    return raw + cents + mom + rings + ["edge_px", "edge_nx", "edge_py", "edge_ny"]


def edge_distances(row, col, h: int, w: int, r: int) -> np.ndarray:
    """Pixels from the peak to the frame edge toward +x, -x, +y, -y, capped at r + 1 (m, 4)."""
    return np.minimum(np.column_stack([w - 1 - col, col, h - 1 - row, row]), r + 1).astype(np.float32)


def features_at(frames: np.ndarray, item, row, col, r: int, adu_per_e: float = 1.0, offset: float = 0.0,
                threshold: float = THRESHOLD_E, edges: np.ndarray | None = None):
    """:func:`features` of the ``(2r+1)^2`` windows around (item, row, col), read from the raw frames
    (ADU): the live path, which then never builds the (m, 13, 13) window array (numba); bitwise the
    same as gathering the windows first (the numpy reference does just that)."""
    if edges is None:
        edges = np.full((len(item), 4), r + 1, np.float32)
    if _fast.HAVE_NUMBA:
        return _fast._features_from_frames(frames, np.asarray(item), np.asarray(row), np.asarray(col), int(r),
                                           float(offset), 1.0 / adu_per_e, float(threshold),
                                           np.ascontiguousarray(edges, np.float32), RAW_HALF)
    return features(_gather(frames, item, row, col, r, adu_per_e, offset), threshold, edges)


def features(win: np.ndarray, threshold: float = THRESHOLD_E, edges: np.ndarray | None = None):
    """Feature matrix (m, f) float32 of electron windows, plus the symmetry to undo.

    ``edges`` (m, 4): :func:`edge_distances` (a truncated event is biased toward the frame centre)."""
    if _fast.HAVE_NUMBA and win.ndim == 3:
        r = win.shape[-1] // 2
        if edges is None:
            edges = np.full((len(win), 4), r + 1, np.float32)
        return _fast._features(np.ascontiguousarray(win, np.float32), float(threshold),
                               np.ascontiguousarray(edges, np.float32), RAW_HALF)
    cw, fx, fy, tr = canonical(win, threshold)
    m, s, _ = cw.shape
    r = s // 2
    if m == 0:
        return np.zeros((0, len(feature_names(r))), np.float32), fx, fy, tr
    raw = cw[:, r - RAW_HALF:r + RAW_HALF + 1, r - RAW_HALF:r + RAW_HALF + 1].reshape(m, -1)
    cents = []
    for half, th in ((1, 0.0), (1, threshold), (2, 0.0), (2, threshold)):
        cents.extend(centroid(cw, half, th))
    k = np.arange(-r, r + 1, dtype=np.float32)
    wt = np.where(cw > threshold, cw, 0.0)
    q = wt.sum(axis=(1, 2))
    qs = np.maximum(q, 1e-6)
    px, py = wt.sum(axis=1), wt.sum(axis=2)  # (m, s) profiles along x and y
    mx, my = (px * k).sum(1) / qs, (py * k).sum(1) / qs
    sxx = (px * k * k).sum(1) / qs - mx * mx
    syy = (py * k * k).sum(1) / qs - my * my
    sxy = (wt * k[None, :, None] * k[None, None, :]).sum(axis=(1, 2)) / qs - mx * my
    tr_ = sxx + syy
    disc = np.sqrt(np.maximum((sxx - syy) ** 2 / 4 + sxy * sxy, 0.0))
    elong = (tr_ / 2 + disc) / np.maximum(tr_ / 2 - disc, 0.05)
    npix = (cw > threshold).sum(axis=(1, 2)).astype(np.float32)
    peak = cw[:, r, r]
    box3 = cw[:, r - 1:r + 2, r - 1:r + 2].sum(axis=(1, 2))
    yy, xx = np.meshgrid(k, k, indexing="ij")
    d2 = np.where(cw > threshold, xx * xx + yy * yy, -1.0).reshape(m, -1)
    far = d2.argmax(axis=1)
    far_x, far_y = xx.reshape(-1)[far], yy.reshape(-1)[far]
    cheb = np.maximum(np.abs(xx), np.abs(yy)).astype(np.int64).reshape(-1)
    rings = np.stack([wt.reshape(m, -1)[:, cheb == i].sum(axis=1) for i in range(r + 1)], axis=1)
    if edges is None:
        edges = np.full((m, 4), r + 1, np.float32)
    ex = np.where(fx[:, None], edges[:, [1, 0]], edges[:, [0, 1]])
    ey = np.where(fy[:, None], edges[:, [3, 2]], edges[:, [2, 3]])
    ex, ey = np.where(tr[:, None], ey, ex), np.where(tr[:, None], ex, ey)
    X = np.column_stack([raw, *cents, mx, my, sxx, syy, sxy, elong, q, npix, peak, box3,
                         far_x, far_y, np.sqrt(np.maximum(d2.max(axis=1), 0)), rings, ex, ey]).astype(np.float32)
    return X, fx, fy, tr
