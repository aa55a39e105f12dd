"""SMLM Challenge 2016 assessment: per-frame Hungarian matching, Jaccard index, RMSE, efficiency.

A localization and a true emitter of the same frame may pair when they are within 250 nm laterally
and 500 nm axially; the pairing minimises the summed lateral distance (scipy's
linear_sum_assignment on a cost matrix where forbidden pairs cost more than any allowed set).
JI = TP / (TP + FP + FN) in %; lateral RMSE = sqrt(mean(dx^2 + dy^2)), axial = sqrt(mean dz^2);
efficiency E = 100 - sqrt((100 - JI)^2 + alpha^2 RMSE^2), alpha = 1 %/nm lateral, 0.5 %/nm axial;
the 3D efficiency is the mean of the lateral and axial ones.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

LATERAL_TOL = 250.0
AXIAL_TOL = 500.0


def match(est_item, est_xyz, true_item, true_xyz, lateral_tol: float = LATERAL_TOL,
          axial_tol: float = AXIAL_TOL) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i_est, i_true) of matched localizations, frame by frame."""
    est_item, true_item = np.asarray(est_item), np.asarray(true_item)
    est_xyz, true_xyz = np.asarray(est_xyz, float).reshape(-1, 3), np.asarray(true_xyz, float).reshape(-1, 3)
    out_e, out_t = [], []
    eo, to = np.argsort(est_item, kind="stable"), np.argsort(true_item, kind="stable")
    frames = np.intersect1d(est_item, true_item)
    es = np.searchsorted(est_item[eo], frames, "left"), np.searchsorted(est_item[eo], frames, "right")
    ts = np.searchsorted(true_item[to], frames, "left"), np.searchsorted(true_item[to], frames, "right")
    big = 1e9
    for k in range(len(frames)):
        ie, it = eo[es[0][k]:es[1][k]], to[ts[0][k]:ts[1][k]]
        a, b = est_xyz[ie], true_xyz[it]
        lat = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
        ax = np.abs(a[:, None, 2] - b[None, :, 2])
        ok = (lat <= lateral_tol) & (ax <= axial_tol)
        if not ok.any():
            continue
        r, c = linear_sum_assignment(np.where(ok, lat, big))
        keep = ok[r, c]
        out_e.append(ie[r[keep]])
        out_t.append(it[c[keep]])
    if not out_e:
        return np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(out_e), np.concatenate(out_t)


def efficiency(ji: float, rmse: float, alpha: float) -> float:
    return float(100.0 - np.sqrt((100.0 - ji) ** 2 + (alpha * rmse) ** 2))


def assess(est_item, est_xyz, true_item, true_xyz) -> dict:
    """JI, RMSEs, efficiencies and the matched pairs of one data set."""
    ie, it = match(est_item, est_xyz, true_item, true_xyz)
    n_est, n_true, tp = len(np.asarray(est_item)), len(np.asarray(true_item)), len(ie)
    ji = 100.0 * tp / max(n_est + n_true - tp, 1)
    est_xyz, true_xyz = np.asarray(est_xyz, float).reshape(-1, 3), np.asarray(true_xyz, float).reshape(-1, 3)
    d = est_xyz[ie] - true_xyz[it]
    lat = float(np.sqrt(np.mean(d[:, 0] ** 2 + d[:, 1] ** 2))) if tp else float("nan")
    ax = float(np.sqrt(np.mean(d[:, 2] ** 2))) if tp else float("nan")
    e_lat, e_ax = efficiency(ji, lat, 1.0), efficiency(ji, ax, 0.5)
    return {"ji": ji, "tp": tp, "fp": n_est - tp, "fn": n_true - tp, "rmse_lat": lat, "rmse_ax": ax,
            "eff_lat": e_lat, "eff_ax": e_ax, "eff_3d": 0.5 * (e_lat + e_ax), "i_est": ie, "i_true": it}
