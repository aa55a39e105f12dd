"""Per-localization features for the trees: the ROI fit, what the fit failed to explain, and crowding.

The trees learn corrections to the single-emitter fit (overlapping neighbours bias it toward them)
and whether a candidate is a real emitter. So the features say (a) where the fit landed and how
sure it is (CRLB at the estimate), (b) the residual image's moments (a neighbour left in the ROI
shows up as residual mass off-centre, in the direction of the bias), (c) the nearest other
candidates of the frame. All vectorized over the packet's localizations.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .detect import ROI
from .localize import Localizations, neighbours

FEATURE_NAMES = (
    "x_in_roi", "y_in_roi", "x_frac", "y_frac", "z_fit", "log_photons", "log_bg", "log_sd_x",
    "log_sd_y", "log_sd_z", "chi2", "dog_snr", "res_sum", "res_mx", "res_my", "res_mxx_myy",
    "res_mxy", "res_abs", "res_peak", "nn1_dist", "nn1_dx", "nn1_dy", "nn1_rel_photons", "nn2_dist",
    "n_within_5px", "frame_count", "converged", "flags",
)


def features(L: Localizations, pixel_nm: float) -> np.ndarray:
    """(m, len(FEATURE_NAMES)) float32."""
    m = len(L)
    if m == 0:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32)
    th, f = L.fit.theta, L.fit
    N = np.maximum(th[:, 3], 1.0)
    res = L.rois - f.mu
    ar = np.arange(ROI) + 0.5
    u = ar[None, None, :] - th[:, 0, None, None]   # column offset from the fit (pixels)
    v = ar[None, :, None] - th[:, 1, None, None]   # row offset
    chi2 = ((res * res) / (f.mu + 2.25)).reshape(m, -1).mean(1)
    r_sum = res.reshape(m, -1).sum(1) / N
    r_mx = (res * u).reshape(m, -1).sum(1) / N
    r_my = (res * v).reshape(m, -1).sum(1) / N
    r_q = (res * (u * u - v * v)).reshape(m, -1).sum(1) / N
    r_xy = (res * u * v).reshape(m, -1).sum(1) / N
    r_abs = np.abs(res).reshape(m, -1).sum(1) / N
    r_peak = res.reshape(m, -1).max(1) / np.sqrt(th[:, 4] + 2.25)
    xy_px = L.xyz[:, :2] / pixel_nm
    dist, idx = neighbours(L.item, xy_px, k=3)
    xy_pad = np.vstack([xy_px, [[np.nan, np.nan]]])
    n_pad = np.append(N, np.nan)
    d1 = np.minimum(dist[:, 0], 30.0)
    dx1 = np.where(np.isfinite(dist[:, 0]), xy_pad[idx[:, 0], 0] - xy_px[:, 0], 0.0)
    dy1 = np.where(np.isfinite(dist[:, 0]), xy_pad[idx[:, 0], 1] - xy_px[:, 1], 0.0)
    rel = np.where(np.isfinite(dist[:, 0]), np.log(n_pad[idx[:, 0]] / N), 0.0)
    d2 = np.minimum(dist[:, 1], 30.0)
    # neighbours within 5 px: a radius query of the same kind (frames kept apart by the offset)
    pts = np.column_stack([xy_px[:, 0] + L.item * 1e7, xy_px[:, 1]])
    within = cKDTree(pts).query_ball_point(pts, 5.0, return_length=True).astype(np.float64) - 1
    counts = np.bincount(L.item)[L.item]
    X = np.column_stack([
        th[:, 0] - ROI / 2, th[:, 1] - ROI / 2, th[:, 0] % 1.0, th[:, 1] % 1.0, th[:, 2], np.log(N),
        np.log(np.maximum(th[:, 4], 1e-2)), np.log(L.sd[:, 0] + 1e-3), np.log(L.sd[:, 1] + 1e-3),
        np.log(L.sd[:, 2] + 1e-3), chi2, L.snr, r_sum, r_mx, r_my, r_q, r_xy, r_abs, r_peak,
        d1, dx1, dy1, rel, d2, within, counts, f.converged, L.flags,
    ])
    return X.astype(np.float32)
