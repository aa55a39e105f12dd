"""Label-conditional split-conformal 90% intervals: calibrated once with MAPIE, applied with numpy.

Why label-conditional
---------------------
A tuple carries little information (CRB ~5-6 nm at ~100 photons over a 6-30 nm range), so the
point model shrinks toward the middle of the training range. Ordinary (marginal) split conformal
or CQR then covers 90% *on average*, but less at the ends of the range (measured on held-out
static rulers: 86-87% at 6-10 and 26-30 nm with this score, 75-83% with MAPIE CQR on 5%/95%
quantile boosters; see bench/RESULTS.md). The scientist asks "does the interval cover the true
distance of *this* ruler", i.e. coverage conditional on the true distance. Mondrian conformal
prediction by label (Vovk et al.) gives exactly that: the calibration set is split into bins of
the true distance, each bin gets its own conformal quantile Q_b, and the prediction set is

    { y : |y - d_hat| * s(N) <= Q_bin(y) }

which covers the truth with probability >= 90% within every bin (finite-sample, exchangeable
rulers). Intervals are the hull of that set, clipped to the calibrated distance range.

Adaptivity: the score is the absolute residual scaled by s(N) = (N / 100)^p, with the exponent p
fitted on validation rulers (not on calibration ones), so widths shrink with photon count.

d_hat here is the booster's posterior-mean output, not the de-shrunk distance the worker reports
(:mod:`streamer.debias`): the conformal guarantee holds for any fixed score, and this one gives
the narrower, more photon-adaptive intervals (measured: 12.8 vs 14.4 nm mean width on static).
The predictor then extends each interval to contain its reported distance (a superset: coverage
holds; 13.8 nm mean width on static), see :mod:`streamer.model_predictor`.

MAPIE does the conformal step: per bin, a ``SplitConformalRegressor`` (prefit, absolute score) is
conformalized on the scaled problem (y * s, d_hat * s), whose absolute residual is our score.
The worker never calls MAPIE: :func:`apply_intervals` uses the stored Q_b with numpy, and
``tests/test_models_conformal.py`` proves it reproduces MAPIE's intervals.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from .jit import HAVE_NUMBA, jit

PHOTON_REF = 100.0


class BoosterRegressor(RegressorMixin, BaseEstimator):
    """Read-only scikit-learn view of a trained ``xgboost.Booster`` (MAPIE's prefit mode needs one)."""

    def __init__(self, booster=None, n_features: int = 0):
        self.booster = booster
        self.n_features = n_features
        self.n_features_in_ = n_features  # marks the estimator as fitted for MAPIE's check

    def fit(self, X, y):  # pragma: no cover - prefit only
        raise NotImplementedError("BoosterRegressor wraps an already trained booster")

    def predict(self, X) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(np.asarray(X, np.float32)), np.float64)


class ScaledRegressor(RegressorMixin, BaseEstimator):
    """Predicts d_hat(X) * s from rows [X, s]: the scaled problem whose absolute residual is our score."""

    def __init__(self, base=None, n_features: int = 0):
        self.base = base
        self.n_features = n_features
        self.n_features_in_ = n_features + 1

    def fit(self, X, y):  # pragma: no cover - prefit only
        raise NotImplementedError("ScaledRegressor wraps an already trained estimator")

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X)
        return self.base.predict(X[:, :-1]) * X[:, -1]


def photon_scale(photons: np.ndarray, power: float) -> np.ndarray:
    """Score scale s(N) = (N / 100)^p (float32); N < 1 is treated as 1."""
    n = np.maximum(np.asarray(photons, np.float32), np.float32(1.0))
    return (n * np.float32(1.0 / PHOTON_REF)) ** np.float32(power)


def fit_photon_power(residual: np.ndarray, photons: np.ndarray, n_bins: int = 10) -> float:
    """Exponent p of RMS residual ~ N^-p, fitted over photon-count quantile bins."""
    edges = np.quantile(photons, np.linspace(0, 1, n_bins + 1)[1:-1])
    idx = np.searchsorted(edges, photons, side="right")
    xs, ys = [], []
    for k in np.unique(idx):
        sel = idx == k
        if sel.sum() >= 20:
            xs.append(np.log(np.median(photons[sel])))
            ys.append(0.5 * np.log(np.mean(residual[sel] ** 2)))
    if len(xs) < 2 or np.ptp(xs) == 0:
        return 0.0
    return float(np.clip(-np.polyfit(xs, ys, 1)[0], 0.0, 1.5))


def label_bins(y: np.ndarray, bin_width_nm: float) -> np.ndarray:
    """Bin edges over the calibrated distance range.

    A few distinct distances (dynamic traces): one cell per distance, cut at the midpoints and
    bounded by the extreme distances. Otherwise bins of ``bin_width_nm`` over [min, max].
    """
    values = np.unique(y)
    if len(values) <= 12:
        if len(values) < 2:
            raise ValueError("label-conditional calibration needs at least two distances")
        return np.concatenate([[values[0]], (values[:-1] + values[1:]) / 2, [values[-1]]])
    lo, hi = float(y.min()), float(y.max())
    n = max(1, int(round((hi - lo) / bin_width_nm)))
    return np.linspace(lo, hi, n + 1)


def bin_index(y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, y, side="right") - 1, 0, len(edges) - 2)


def _mapie_q(estimator, X_aug: np.ndarray, y_scaled: np.ndarray, confidence_level: float) -> float:
    """Conformal quantile of the absolute score, as MAPIE applies it."""
    from mapie.regression import SplitConformalRegressor

    scr = SplitConformalRegressor(estimator, confidence_level=confidence_level,
                                  conformity_score="absolute", prefit=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scr.conformalize(X_aug, y_scaled)
        pred, iv = scr.predict_interval(X_aug[:1])
    return float(iv[0, 1, 0] - pred[0])


def mapie_scaled_problem(point, X: np.ndarray, y: np.ndarray, scale: np.ndarray):
    """(estimator, X_aug, y_scaled) of the scaled problem for MAPIE."""
    X_aug = np.column_stack([np.asarray(X, np.float64), np.asarray(scale, np.float64)])
    return ScaledRegressor(point, X.shape[1]), X_aug, np.asarray(y, np.float64) * scale


def merge_sparse_bins(y: np.ndarray, edges: np.ndarray, need: int) -> np.ndarray:
    """Edges in which a few sparse bins (< ``need`` labels) are merged, each into its sparser
    neighbour, sparsest first. Within an information cell few calibration tuples fall at some
    distances (the ends of the range; ~50 nm at high information, where the visibility's period
    folds), so those bins get wider; a merged bin keeps the per-bin guarantee. At most a quarter of
    the bins are merged away, so a calibration set starved throughout is still refused by the caller."""
    edges = np.asarray(edges, np.float64)
    for _ in range((len(edges) - 1) // 4):
        counts = np.bincount(bin_index(y, edges), minlength=len(edges) - 1)
        k = int(np.argmin(counts))
        if counts[k] >= need or len(counts) < 2:
            break
        if k == 0 or (k < len(counts) - 1 and counts[k + 1] < counts[k - 1]):
            edges = np.delete(edges, k + 1)  # merge with the upper neighbour
        else:
            edges = np.delete(edges, k)  # with the lower one
    return edges


def calibrate(point, X_cal: np.ndarray, y_cal: np.ndarray, photons_cal: np.ndarray, power: float,
              confidence_level: float = 0.9, bin_width_nm: float = 1.0, min_per_bin: int = 200) -> dict:
    """Per-bin (label-conditional) and pooled (marginal) conformal quantiles, via MAPIE.

    ``point`` is a scikit-learn regressor (e.g. :class:`BoosterRegressor`).
    """
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    y_cal = np.asarray(y_cal, np.float64)
    need = max(min_per_bin, int(np.ceil(1.0 / (1.0 - confidence_level))))
    edges = merge_sparse_bins(y_cal, label_bins(y_cal, bin_width_nm), need)
    b = bin_index(y_cal, edges)
    counts = np.bincount(b, minlength=len(edges) - 1)
    if counts.min() < need:
        raise ValueError(f"calibration bins hold {counts.min()}..{counts.max()} tuples; need >= {min_per_bin} "
                         f"each: simulate more calibration rulers or widen the bins")
    est, X_aug, y_scaled = mapie_scaled_problem(point, X_cal, y_cal, photon_scale(photons_cal, power))
    q_bins = [_mapie_q(est, X_aug[b == k], y_scaled[b == k], confidence_level) for k in range(len(edges) - 1)]
    return {
        "method": "label-conditional split conformal (Mondrian by true-distance bin)",
        "library": "mapie.regression.SplitConformalRegressor(prefit=True, conformity_score='absolute') per bin",
        "score": "|y - d_hat| * (N / 100)^p",
        "confidence_level": confidence_level,
        "photon_power": float(power),
        "photon_ref": PHOTON_REF,
        "bin_edges_nm": [float(e) for e in edges],
        "q_bins": q_bins,
        "q_marginal": _mapie_q(est, X_aug, y_scaled, confidence_level),
        "n_per_bin": [int(c) for c in counts],
        "n_calibration": int(len(y_cal)),
    }


class IntervalCalibration:
    """Stored calibration as float32 arrays, for :func:`apply_intervals` on the hot path."""

    def __init__(self, calibration: dict):
        edges = np.asarray(calibration["bin_edges_nm"], np.float32)
        self.left = edges[:-1][None, :]
        self.right = edges[1:][None, :]
        self.q = np.asarray(calibration["q_bins"], np.float32)[None, :]
        self.q_marginal = np.float32(calibration["q_marginal"])
        self.power = float(calibration["photon_power"])
        self.range = (float(edges[0]), float(edges[-1]))
        warm_up()


def warm_up() -> None:
    """Load the compiled hull now (~0.15 s from numba's disk cache), not in the first packet."""
    one = np.ones((1, 1), np.float32)
    hull(one[0], one[0], one, one, one)


def apply_intervals(d_hat: np.ndarray, photons: np.ndarray, cal: IntervalCalibration):
    """(lower, upper, empty) hull of {y in range: |y - d_hat| * s(N) <= Q_bin(y)}, vectorized.

    ``empty`` marks tuples for which no calibrated distance is plausible (the prediction lies far
    outside the calibrated range); they get the marginal interval clipped to the range.
    """
    d = np.ascontiguousarray(d_hat, np.float32)
    inv_s = np.float32(1.0) / photon_scale(photons, cal.power)
    lo, hi = hull(d, inv_s, cal.left, cal.right, cal.q)
    empty = ~np.isfinite(lo)
    if empty.any():
        dm, sm = d[empty], inv_s[empty] * cal.q_marginal
        lo[empty] = np.clip(dm - sm, *cal.range)
        hi[empty] = np.clip(dm + sm, *cal.range)
    return lo, hi, empty


def hull(d: np.ndarray, inv_s: np.ndarray, left: np.ndarray, right: np.ndarray, q: np.ndarray,
         cell: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) float32: hull over bins b of [max(left_b, d - Q_b inv_s), min(right_b, d + Q_b inv_s)]
    where non-empty; +inf / -inf where every bin is empty. ``left``/``right``/``q``: (cells, bins)
    tables (a padded bin has left +inf, right -inf), ``cell``: each item's row (default row 0).

    Compiled, one pass per item: the (n, bins) numpy temporaries of :func:`_hull_numpy` were a
    quarter of a MINFLUX worker's time. Same float32 steps, bit-identical results (tested)."""
    d = np.ascontiguousarray(d, np.float32)
    inv_s = np.ascontiguousarray(inv_s, np.float32)
    cell = np.zeros(len(d), np.intp) if cell is None else np.ascontiguousarray(cell, np.intp)
    tables = [np.ascontiguousarray(np.atleast_2d(a), np.float32) for a in (left, right, q)]
    if HAVE_NUMBA:
        return _hull(d, inv_s, *tables, cell)
    return _hull_numpy(d, inv_s, *tables, cell)


def _hull_numpy(d, inv_s, left, right, q, cell):
    """Reference of :func:`_hull` (and the path without numba)."""
    half = q[cell] * inv_s[:, None]  # (n, bins)
    lo_b = np.maximum(left[cell], d[:, None] - half)
    hi_b = np.minimum(right[cell], d[:, None] + half)
    ok = lo_b <= hi_b
    big = np.float32(np.inf)
    return np.where(ok, lo_b, big).min(axis=1), np.where(ok, hi_b, -big).max(axis=1)


@jit
def _hull(d, inv_s, left, right, q, cell):  # pragma: no cover - compiled; same float32 steps as _hull_numpy
    n, bins = d.shape[0], q.shape[1]
    lo = np.empty(n, np.float32)
    hi = np.empty(n, np.float32)
    for i in range(n):
        c = cell[i]
        a = np.float32(np.inf)
        b = np.float32(-np.inf)
        for k in range(bins):
            half = q[c, k] * inv_s[i]
            lb = d[i] - half
            hb = d[i] + half
            if lb < left[c, k]:  # (not max(): NaN must stay NaN, as in np.maximum)
                lb = left[c, k]
            if hb > right[c, k]:
                hb = right[c, k]
            if lb <= hb:
                a = min(a, lb)
                b = max(b, hb)
        lo[i] = a
        hi[i] = b
    return lo, hi


def apply_marginal(d_hat: np.ndarray, photons: np.ndarray, calibration: dict):
    """Ordinary split-conformal interval d_hat +- Q / s(N) (the baseline that is not label-conditional)."""
    half = np.float32(calibration["q_marginal"]) / photon_scale(photons, calibration["photon_power"])
    d = np.asarray(d_hat, np.float32)
    return d - half, d + half
