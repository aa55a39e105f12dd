"""Event detection in counting-mode frames and the seed's centroid baselines (all vectorized).

Detection (one pass over a packet of frames, no per-event Python loop):

1. frames -> electrons: ``e = (ADU - offset) / adu_per_e``;
2. candidates: local maxima of ``e`` in 3x3 with ``e >= seed_e`` and a 3x3 charge ``>= box_e``
   (a single noise pixel rarely passes both; sigma 20 e- read noise);
3. one event per track: a candidate is dropped when a stronger one (3x3 charge) lies within
   ``merge_px`` pixels (Chebyshev) and the line between them never dips below ``dip`` x its peak --
   a back-scattered track has several maxima a few pixels apart on one continuous streak, and
   counting them once is what "no electron counted twice" needs; two electrons show a dip;
4. a ``(2R+1)^2`` window around each kept peak feeds the baselines and the model features.

Baselines (seed 003): centre of the max pixel; 3x3 and 5x5 centroids around it, each with the
read-noise threshold (40 e-) or without (threshold 0: negative noise clipped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from . import fast as _fast

THRESHOLD_E = 40.0
WINDOW_R = 6  # window half-size (13x13) around each peak


@dataclass(frozen=True)
class DetectParams:
    threshold_e: float = THRESHOLD_E
    seed_e: float = 50.0
    box_e: float = 150.0
    merge_px: int = 4
    dip: float = 0.0  # rule-based merge: 0 = one event per cluster of maxima within merge_px
    keep_p: float = 0.5  # candidate-classifier probability to keep a candidate
    orphan_box: float = 300.0  # >0: a bright candidate (3x3 >= this) with no kept one within window_r is kept
    window_r: int = WINDOW_R
    merge_p: float = 2.0  # pair classifier: P(same electron) >= this drops the less probable detection (> 1: off)
    #: pairs go to the pair classifier only when the less probable detection's keep probability is below
    #: this: the secondary maxima it removes score 0.4-0.8 (none of 267 merged pairs in a dense 576x576
    #: packet scored >= 0.9, which 68 % of the pairs do: the stage costs a third as much)
    merge_below: float = 0.9


#: the seed's own detection (baselines): brightest 3x3 among maxima within 4 px, no classifier
SEED_RULE = DetectParams(seed_e=60.0, box_e=220.0, merge_px=4, dip=0.0)


@dataclass
class Detections:
    """Kept peaks: frame index, peak pixel (row, col), electron windows (m, 2R+1, 2R+1)."""

    item: np.ndarray
    row: np.ndarray
    col: np.ndarray
    window: np.ndarray | None  # None: not gathered (``detect(windows=False)``; features read the frames)
    box3: np.ndarray

    def __len__(self) -> int:
        return len(self.item)


def to_electrons(frames: np.ndarray, adu_per_e: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """ADU frames (any numeric dtype) -> float32 electrons."""
    e = frames.astype(np.float32, copy=True)
    if offset:
        e -= np.float32(offset)
    if adu_per_e != 1.0:
        e *= np.float32(1.0 / adu_per_e)
    return e


def _gather(frames: np.ndarray, item, row, col, r: int, adu_per_e: float, offset: float) -> np.ndarray:
    """Electron windows of half-size ``r`` centred on (row, col); pixels outside the frame are 0."""
    _, h, w = frames.shape
    k = np.arange(-r, r + 1)
    rr = row[:, None, None] + k[None, :, None]
    cc = col[:, None, None] + k[None, None, :]
    inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    v = frames[item[:, None, None], np.clip(rr, 0, h - 1), np.clip(cc, 0, w - 1)].astype(np.float32)
    v = (v - np.float32(offset)) * np.float32(1.0 / adu_per_e)
    return np.where(inside, v, np.float32(0.0))


def _pairs(item, row, col, box, radius: int):
    """All candidate pairs within ``radius`` (Chebyshev) as (strong, weak) index arrays."""
    pts = np.column_stack([col + item.astype(np.float64) * 1e5, row.astype(np.float64)])
    pairs = cKDTree(pts).query_pairs(radius + 0.5, p=np.inf, output_type="ndarray")
    if len(pairs) == 0:
        z = np.zeros(0, np.int64)
        return z, z
    i, j = pairs[:, 0], pairs[:, 1]
    swap = (box[j] > box[i]) | ((box[j] == box[i]) & (j < i))
    return np.where(swap, j, i), np.where(swap, i, j)


def _valley(frames, item, row, col, s, wk, steps: int, adu_per_e: float, offset: float) -> np.ndarray:
    """Lowest pixel (electrons) on the straight line strictly between candidates s and wk."""
    d = np.maximum(np.abs(row[s] - row[wk]), np.abs(col[s] - col[wk]))
    t = np.arange(1, steps + 1)[None, :] / np.maximum(d, 1)[:, None]
    valid = t < 1.0
    rr = np.rint(row[s][:, None] + (row[wk] - row[s])[:, None] * t).astype(np.int64)
    cc = np.rint(col[s][:, None] + (col[wk] - col[s])[:, None] * t).astype(np.int64)
    _, h, w = frames.shape
    v = frames[item[s][:, None], np.clip(rr, 0, h - 1), np.clip(cc, 0, w - 1)].astype(np.float32)
    v = (v - np.float32(offset)) * np.float32(1.0 / adu_per_e)
    return np.where(valid, v, np.inf).min(axis=1)


def _merge(item, row, col, box, peak, frames, p: DetectParams, adu_per_e: float, offset: float) -> np.ndarray:
    """Rule-based keep-mask: a candidate is dropped when a stronger one lies within ``merge_px``
    (Chebyshev) and the pixels on the straight line between them never dip below ``dip`` x the
    weaker peak (one continuous track); a dip means two electrons, both kept."""
    keep = np.ones(len(item), bool)
    s, wk = _pairs(item, row, col, box, p.merge_px)
    if len(s) == 0:
        return keep
    d = np.maximum(np.abs(row[s] - row[wk]), np.abs(col[s] - col[wk]))
    valley = _valley(frames, item, row, col, s, wk, p.merge_px, adu_per_e, offset)
    separate = (d > 1) & (valley < p.dip * peak[wk])
    keep[wk[~separate]] = False
    return keep


CANDIDATE_FEATURES = ["peak", "box3", "q_th", "npix_th", "n_stronger", "n_weaker", "nb_ratio", "nb_cheb", "nb_dist",
                      "nb_valley", "nb_valley_rel", "nb_peak_rel"] + [f"w{i}_{j}" for i in range(-2, 3) for j in range(-2, 3)]


def candidate_features(frames, item, row, col, box, peak, win, p: DetectParams, adu_per_e: float, offset: float):
    """Features saying whether a candidate is an electron's own peak or a secondary maximum of a
    track (or noise): its charge and shape, and its relation to the strongest stronger candidate
    within the window (ratio, distance, valley on the line between them)."""
    m = len(item)
    r = win.shape[-1] // 2
    above = win > p.threshold_e
    q = np.where(above, win, 0).sum(axis=(1, 2))
    npix = above.sum(axis=(1, 2))
    s, wk = _pairs(item, row, col, box, r)
    n_str = np.bincount(wk, minlength=m)
    n_weak = np.bincount(s, minlength=m)
    nb_ratio = np.zeros(m, np.float32)
    nb_cheb = np.full(m, r + 1, np.float32)
    nb_dist = np.full(m, r + 1, np.float32)
    nb_val = np.full(m, -1.0, np.float32)
    nb_peak = np.zeros(m, np.float32)
    if len(s):
        # strongest stronger neighbour of each weak candidate: sort pairs by (weak, box of strong)
        o = np.lexsort((box[s], wk))
        last = np.r_[wk[o][1:] != wk[o][:-1], True]
        ss, ww = s[o][last], wk[o][last]
        nb_ratio[ww] = box[ss] / np.maximum(box[ww], 1.0)
        nb_cheb[ww] = np.maximum(np.abs(row[ss] - row[ww]), np.abs(col[ss] - col[ww]))
        nb_dist[ww] = np.hypot(row[ss] - row[ww], col[ss] - col[ww])
        nb_val[ww] = _valley(frames, item, row, col, ss, ww, r, adu_per_e, offset)
        nb_peak[ww] = peak[ss] / np.maximum(peak[ww], 1.0)
    rel = np.where(nb_val >= -0.5, nb_val / np.maximum(peak, 1.0), -1.0)
    core = win[:, r - 2:r + 3, r - 2:r + 3].reshape(m, 25)
    return np.column_stack([peak, box, q, npix, n_str, n_weak, nb_ratio, nb_cheb, nb_dist, nb_val, rel,
                            nb_peak, core]).astype(np.float32)


def _orphans(item, row, col, box, prob, keep, p: DetectParams) -> np.ndarray:
    """Bright candidates the classifier rejected although nothing near them was kept (it can reject
    every maximum of a back-scattered track): the most probable one per group is kept, so every
    bright cluster is counted once."""
    orphan = ~keep & (box >= p.orphan_box)
    if not orphan.any():
        return orphan
    s, wk = _pairs(item, row, col, box, p.window_r)
    near_kept = np.zeros(len(item), bool)
    near_kept[s[keep[wk]]] = True
    near_kept[wk[keep[s]]] = True
    orphan &= ~near_kept
    both = orphan[s] & orphan[wk]
    a, b = s[both], wk[both]
    orphan[np.where(prob[a] >= prob[b], b, a)] = False
    return orphan


_PC = _fast.PAIR_CANDIDATE_COLS
PAIR_FEATURES = ([f"a_{n}" for n in CANDIDATE_FEATURES[:_PC]] + [f"b_{n}" for n in CANDIDATE_FEATURES[:_PC]]
                 + ["p_a", "p_b", "dist", "cheb", "valley", "valley_rel"])


def pair_features(frames, item, row, col, peak, prob, Xk, r: int, below: float, adu_per_e: float, offset: float):
    """Every pair of kept detections within Chebyshev ``r`` of one frame whose less probable member's
    probability is below ``below``, as (a, b, X): ``a`` the more probable one (candidate classifier),
    X = both candidates' features (:data:`CANDIDATE_FEATURES` without the 5x5 pixels), both
    probabilities, their distance and the valley between them (:data:`PAIR_FEATURES`). The pair
    classifier says from X whether they are one electron's."""
    if _fast.HAVE_NUMBA:
        return _fast._pair_features(frames, item, row, col, peak, prob, Xk, r, np.float32(below), float(offset),
                                    1.0 / adu_per_e)
    a, b = _pairs(item, row, col, prob, r)
    doubt = prob[b] < np.float32(below)
    a, b = a[doubt], b[doubt]
    if len(a) == 0:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros((0, len(PAIR_FEATURES)), np.float32)
    v = _valley(frames, item, row, col, a, b, r, adu_per_e, offset)
    valley = np.where(np.isfinite(v), v, -1.0)
    rel = np.where(np.isfinite(v), valley / np.maximum(peak[b], 1.0), -1.0)
    X = np.column_stack([Xk[a, :_PC], Xk[b, :_PC], prob[a], prob[b], np.hypot(row[a] - row[b], col[a] - col[b]),
                         np.maximum(np.abs(row[a] - row[b]), np.abs(col[a] - col[b])), valley, rel])
    return a, b, X.astype(np.float32)


def _merge_pairs(frames, item, row, col, peak, prob, X, keep, p: DetectParams, adu_per_e, offset, merge_model):
    """Keep-mask after the pair stage: of two kept detections the pair classifier calls one
    electron's (P >= ``merge_p``), the less probable one goes (a second count of a bright track)."""
    ki = np.flatnonzero(keep)
    if len(ki) < 2:
        return keep
    a, b, Xp = pair_features(frames, item[ki], row[ki], col[ki], peak[ki], prob[ki], X[ki], p.window_r,
                             p.merge_below, adu_per_e, offset)
    if len(a) == 0:
        return keep
    same = np.asarray(merge_model(Xp), np.float32) >= np.float32(p.merge_p)
    keep = keep.copy()
    keep[ki[b[same]]] = False
    return keep


def candidates(frames: np.ndarray, p: DetectParams, adu_per_e: float = 1.0, offset: float = 0.0):
    """Local maxima (3x3) above ``seed_e`` with 3x3 charge >= ``box_e``: (item, row, col, box, peak)."""
    level = p.seed_e * adu_per_e + offset
    item, row, col = np.nonzero(frames >= (level if frames.dtype.kind == "f" else np.ceil(level)))
    nb = _gather(frames, item, row, col, 1, adu_per_e, offset)  # (m, 3, 3) electrons
    peak = nb[:, 1, 1]
    flat = nb.reshape(len(nb), 9)
    # local maximum in 3x3; a plateau keeps its first pixel in raster order
    before = np.array([0, 1, 2, 3])
    is_max = (flat.max(axis=1) <= peak) & ~(flat[:, before] >= peak[:, None]).any(axis=1)
    box = flat.sum(axis=1)
    ok = is_max & (box >= p.box_e)
    return item[ok], row[ok], col[ok], box[ok], peak[ok]


@dataclass
class Classified:
    """Candidates of a packet with the candidate classifier's verdict (before the pair stage):
    raster-ordered (item, row, col), 3x3 charge, peak, probability, features, keep-mask; ``win``:
    every candidate's window (numpy path only, which needs them for the features)."""

    item: np.ndarray
    row: np.ndarray
    col: np.ndarray
    box: np.ndarray
    peak: np.ndarray
    prob: np.ndarray
    X: np.ndarray
    keep: np.ndarray
    win: np.ndarray | None = None


def _find_candidates(frames: np.ndarray, p: DetectParams, adu_per_e: float, offset: float):
    """:func:`candidates` (raster-ordered) through the numba kernel when installed."""
    if frames.ndim != 3:
        raise ValueError(f"frames must be (n, H, W), got shape {frames.shape}")
    if _fast.HAVE_NUMBA:
        level = _fast.raw_level(p.seed_e, adu_per_e, offset, frames.dtype)
        return _fast._candidates(frames, level, float(offset), 1.0 / adu_per_e, np.float32(p.box_e),
                                 _fast.candidate_capacity(frames.shape))
    return candidates(frames, p, adu_per_e, offset)


def _detections(frames, item, row, col, box, p: DetectParams, adu_per_e: float, offset: float,
                win: np.ndarray | None = None) -> Detections:
    """Detections of the kept peaks, their windows gathered (numba kernel when installed) unless given."""
    if win is None and _fast.HAVE_NUMBA:
        win = _fast._gather(frames, item, row, col, p.window_r, float(offset), 1.0 / adu_per_e)
        return Detections(item, row, col, win, box)
    if win is None:
        win = _gather(frames, item, row, col, p.window_r, adu_per_e, offset)
    return Detections(item.astype(np.int32), row.astype(np.int32), col.astype(np.int32), win, box.astype(np.float32))


def classify(frames: np.ndarray, p: DetectParams, adu_per_e: float, offset: float, keep_model) -> Classified:
    """Candidates, their features and the classifier's keep-mask (probability >= ``keep_p``, plus the
    orphan rule); numba kernels of :mod:`.fast` when installed, the numpy reference otherwise."""
    item, row, col, box, peak = _find_candidates(frames, p, adu_per_e, offset)
    win = None
    if _fast.HAVE_NUMBA:
        X = _fast._candidate_features(frames, item, row, col, box, peak, p.window_r, p.threshold_e, float(offset),
                                      1.0 / adu_per_e)
    else:
        win = _gather(frames, item, row, col, p.window_r, adu_per_e, offset)
        X = candidate_features(frames, item, row, col, box, peak, win, p, adu_per_e, offset)
    prob = np.asarray(keep_model(X), np.float32) if len(item) else np.zeros(0, np.float32)
    keep = prob >= np.float32(p.keep_p)
    if p.orphan_box > 0 and len(item):
        if _fast.HAVE_NUMBA:
            n, h, _ = frames.shape
            keep |= _fast._orphans(item, row, col, box, prob, keep, np.float32(p.orphan_box), p.window_r, n, h)
        else:
            keep |= _orphans(item, row, col, box, prob, keep, p)
    return Classified(item, row, col, box, peak, prob, X, keep, win)


def detect(frames: np.ndarray, p: DetectParams = DetectParams(), adu_per_e: float = 1.0,
           offset: float = 0.0, keep_model=None, merge_model=None, windows: bool = True) -> Detections:
    """Detect events in frames (n, H, W) of ADU (``adu_per_e``, ``offset``) or electrons (defaults).

    Works on the sparse set of pixels above the seed level: no full-frame filter or copy.
    ``keep_model(X) -> probability`` (the trained candidate classifier) replaces the merge rule;
    ``merge_model(X) -> probability`` (the pair classifier, with ``p.merge_p`` <= 1) then drops
    second counts among the kept detections. ``windows=False`` (with a keep model and numba): the
    kept peaks without their windows (the trees' live path reads its features from the frames).
    """
    if keep_model is not None:
        c = classify(frames, p, adu_per_e, offset, keep_model)
        keep = c.keep
        if merge_model is not None and p.merge_p <= 1.0:
            keep = _merge_pairs(frames, c.item, c.row, c.col, c.peak, c.prob, c.X, keep, p, adu_per_e, offset,
                                merge_model)
        if not windows and c.win is None:
            return Detections(c.item[keep], c.row[keep], c.col[keep], None, c.box[keep])
        return _detections(frames, c.item[keep], c.row[keep], c.col[keep], c.box[keep], p, adu_per_e, offset,
                           None if c.win is None else c.win[keep])
    # the seed's rule (baselines): brightest 3x3 among maxima within merge_px
    item, row, col, box, peak = _find_candidates(frames, p, adu_per_e, offset)
    if len(item) > 1 and p.merge_px > 0:
        keep = _merge(item, row, col, box, peak, frames, p, adu_per_e, offset)
        item, row, col, box = item[keep], row[keep], col[keep], box[keep]
    return _detections(frames, item, row, col, box, p, adu_per_e, offset)


def centroid(win: np.ndarray, half: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Centroid offset (dx, dy) in pixels from the window centre over the central (2*half+1)^2
    pixels, using pixel values above ``threshold`` (0: negative noise clipped)."""
    r = win.shape[-1] // 2
    sub = win[:, r - half:r + half + 1, r - half:r + half + 1]
    wgt = np.where(sub > threshold, sub, 0.0)
    k = np.arange(-half, half + 1, dtype=np.float32)
    tot = wgt.sum(axis=(1, 2))
    safe = np.where(tot > 0, tot, 1.0)
    dx = (wgt.sum(axis=1) * k).sum(axis=1) / safe
    dy = (wgt.sum(axis=2) * k).sum(axis=1) / safe
    return dx.astype(np.float32), dy.astype(np.float32)


BASELINES = {
    "maxpixel": (0, 0.0),
    "centroid3x3": (1, 0.0),
    "centroid3x3_th": (1, THRESHOLD_E),
    "centroid5x5": (2, 0.0),
    "centroid5x5_th": (2, THRESHOLD_E),
}


def baseline_xy(det: Detections, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Entry estimate (x, y) in frame pixels of baseline ``name``."""
    half, th = BASELINES[name]
    if half == 0:
        return det.col.astype(np.float32), det.row.astype(np.float32)
    dx, dy = centroid(det.window, half, th)
    return det.col + dx, det.row + dy
