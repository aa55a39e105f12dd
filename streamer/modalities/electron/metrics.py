"""Matching detections to ground-truth entry points, and the accuracy metrics of the issue."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ...core.metrics import block_bootstrap_weights

MATCH_PX = 6.0  # a detection's peak may sit on a back-scattered track several pixels from the entry
ISOLATION_PX = 10.0  # an event is isolated if no other entry lies within this distance


def match(det_item, det_x, det_y, tru_item, tru_x, tru_y, radius: float = MATCH_PX) -> np.ndarray:
    """Greedy one-to-one matching by distance within ``radius`` (pixels), frame by frame.

    Returns ``det_of_truth`` (len truth): index of the matched detection or -1.
    """
    big = 1e6  # separates frames: no pair across frames can be within radius
    td = np.column_stack([np.asarray(det_x, float) + np.asarray(det_item, float) * big, np.asarray(det_y, float)])
    tt = np.column_stack([np.asarray(tru_x, float) + np.asarray(tru_item, float) * big, np.asarray(tru_y, float)])
    out = np.full(len(tt), -1, np.int64)
    if len(td) == 0 or len(tt) == 0:
        return out
    pairs = cKDTree(tt).sparse_distance_matrix(cKDTree(td), radius, output_type="coo_matrix")
    order = np.argsort(pairs.data, kind="stable")
    used_t = np.zeros(len(tt), bool)
    used_d = np.zeros(len(td), bool)
    for t, d in zip(pairs.row[order], pairs.col[order]):
        if not used_t[t] and not used_d[d]:
            used_t[t] = used_d[d] = True
            out[t] = d
    return out


def double_counts(det_item, det_x, det_y, tru_item, tru_x, tru_y, det_of_truth: np.ndarray,
                  radius: float = MATCH_PX) -> int:
    """Detections left unmatched whose nearest true entry (same frame, within ``radius`` px) is
    already matched to another detection: the same electron counted a second time. The other
    unmatched detections are counts of no electron at all (noise, a track's far end)."""
    matched = np.zeros(len(det_x), bool)
    matched[det_of_truth[det_of_truth >= 0]] = True
    spare = np.flatnonzero(~matched)
    if len(spare) == 0 or len(tru_x) == 0:
        return 0
    big = 1e6  # separates frames, as in :func:`match`
    tree = cKDTree(np.column_stack([np.asarray(tru_x, float) + np.asarray(tru_item, float) * big,
                                    np.asarray(tru_y, float)]))
    dist, idx = tree.query(np.column_stack([np.asarray(det_x, float)[spare] + np.asarray(det_item, float)[spare] * big,
                                            np.asarray(det_y, float)[spare]]), distance_upper_bound=radius)
    near = np.isfinite(dist)
    return int((det_of_truth[idx[near]] >= 0).sum())


def isolated(tru_item, tru_x, tru_y, radius: float = ISOLATION_PX) -> np.ndarray:
    """True for entries with no other entry of the same frame within ``radius`` pixels."""
    pts = np.column_stack([np.asarray(tru_x, float) + np.asarray(tru_item, float) * 1e6, np.asarray(tru_y, float)])
    if len(pts) == 0:
        return np.zeros(0, bool)
    counts = cKDTree(pts).query_ball_point(pts, radius, return_length=True)
    return counts == 1


def local_occupancy(tru_item, tru_x, tru_y, radius: float = 10.0) -> np.ndarray:
    """Other entries within ``radius`` pixels of each entry (the dense-frame difficulty axis)."""
    pts = np.column_stack([np.asarray(tru_x, float) + np.asarray(tru_item, float) * 1e6, np.asarray(tru_y, float)])
    if len(pts) == 0:
        return np.zeros(0, np.int64)
    return cKDTree(pts).query_ball_point(pts, radius, return_length=True) - 1


def knob_curve(err: np.ndarray, score: np.ndarray, n_total: int, efficiencies=np.linspace(0.5, 1.0, 11)):
    """Mean error of the events kept when cutting on ``score`` (low = good) at target efficiencies.

    ``err``/``score`` cover the detected+matched events; efficiency counts kept events over all
    ``n_total`` true events. Returns rows (efficiency, mean error, score cut)."""
    order = np.argsort(score, kind="stable")
    cum = np.cumsum(err[order])
    rows = []
    for eff in efficiencies:
        k = int(round(eff * n_total))
        if k < 1 or k > len(err):
            rows.append((float(eff), float("nan"), float("nan")))
            continue
        rows.append((float(eff), float(cum[k - 1] / k), float(score[order][k - 1])))
    return rows


def knob_ratio_interval(err_a, score_a, err_b, score_b, block, efficiency: float = 0.8, n_boot: int = 200,
                        level: float = 0.9, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the knob ratio at ``efficiency``: mean error of the events ``a`` keeps
    (lowest ``score_a`` first) over that of ``b``, both on the same events, resampling whole blocks of
    frames (``block`` per event): :func:`knob_curve` with each event weighted by its block's count."""
    blk, wb = block_bootstrap_weights(block, n_boot, seed)
    w = wb[:, blk].astype(np.float64)

    def kept_mean(err, score):
        o = np.argsort(score, kind="stable")
        ww, ee = w[:, o], np.asarray(err, np.float64)[o]
        cw = np.cumsum(ww, axis=1)
        keep = cw <= efficiency * cw[:, -1:]
        return (ww * keep * ee).sum(axis=1) / np.maximum((ww * keep).sum(axis=1), 1e-12)

    r = kept_mean(err_a, score_a) / kept_mean(err_b, score_b)
    lo, hi = np.quantile(r, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
