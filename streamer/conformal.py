"""Conformalized quantile regression (CQR) intervals: calibrate once with MAPIE, apply with numpy.

Two quantile boosters predict the 5% and 95% conditional quantiles of the distance; their width
already follows the photon count and the estimate, so the intervals adapt per tuple. CQR then
adds one constant q, computed by MAPIE's ``ConformalizedQuantileRegressor`` (prefit
estimators, symmetric correction) on a calibration set of rulers unseen in training, so that
[lower - q, upper + q] covers the truth with the nominal probability. At inference the worker
only needs q: :func:`apply_cqr` is two numpy additions per batch, no MAPIE call.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin


class BoosterRegressor(RegressorMixin, BaseEstimator):
    """Read-only scikit-learn view of a trained ``xgboost.Booster`` (what MAPIE's prefit mode needs)."""

    def __init__(self, booster=None, n_features: int = 0, column: int | None = None):
        self.booster = booster
        self.n_features = n_features
        self.column = column  # output column of a multi-output (multi-quantile) booster
        self.n_features_in_ = n_features  # marks the estimator as fitted for MAPIE's check

    def fit(self, X, y):  # pragma: no cover - prefit only
        raise NotImplementedError("BoosterRegressor wraps an already trained booster")

    def predict(self, X) -> np.ndarray:
        out = self.booster.inplace_predict(np.asarray(X, np.float32))
        if self.column is not None:
            out = out[:, self.column]
        return np.asarray(out, np.float64)


def mapie_cqr(lower, upper, point, X_cal: np.ndarray, y_cal: np.ndarray, confidence_level: float):
    """MAPIE CQR conformalized on (X_cal, y_cal); estimators are scikit-learn regressors."""
    from mapie.regression import ConformalizedQuantileRegressor

    cqr = ConformalizedQuantileRegressor([lower, upper, point], confidence_level=confidence_level, prefit=True)
    with warnings.catch_warnings():
        # MAPIE warns when the median leaves [lower, upper] on some tuples; harmless for CQR
        warnings.simplefilter("ignore", UserWarning)
        cqr.conformalize(X_cal, y_cal)
    return cqr


def mapie_intervals(cqr, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) of a conformalized MAPIE CQR, symmetric correction."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _, iv = cqr.predict_interval(X, symmetric_correction=True)
    return iv[:, 0, 0], iv[:, 1, 0]


def calibrate_cqr(lower, upper, point, X_cal: np.ndarray, y_cal: np.ndarray, confidence_level: float = 0.9) -> dict:
    """Run MAPIE CQR on the calibration set and return the stored calibration.

    The correction q is read back from MAPIE's own intervals (lower - interval lower bound), so
    the stored number is exactly what MAPIE applies.
    """
    if len(y_cal) < 1.0 / (1.0 - confidence_level):
        raise ValueError(f"{len(y_cal)} calibration tuples are too few for confidence {confidence_level}")
    cqr = mapie_cqr(lower, upper, point, X_cal, y_cal, confidence_level)
    probe = X_cal[:256]
    lo_mapie, hi_mapie = mapie_intervals(cqr, probe)
    q_lo = lower.predict(probe) - lo_mapie
    q_hi = hi_mapie - upper.predict(probe)
    q = float(np.median(np.concatenate([q_lo, q_hi])))
    return {
        "method": "cqr",
        "library": "mapie.regression.ConformalizedQuantileRegressor(prefit=True, symmetric_correction=True)",
        "confidence_level": confidence_level,
        "q_nm": q,
        "n_calibration": int(len(y_cal)),
    }


def apply_cqr(lower_q: np.ndarray, upper_q: np.ndarray, calibration: dict) -> tuple[np.ndarray, np.ndarray]:
    """Conformal interval from the raw quantile predictions and the stored correction."""
    q = np.float32(calibration["q_nm"])
    lo = lower_q - q
    hi = upper_q + q
    # quantile crossing can happen on rare tuples; an interval is the hull of both bounds
    return np.minimum(lo, hi), np.maximum(lo, hi)
