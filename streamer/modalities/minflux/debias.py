"""De-shrinking the regression output so that it is unbiased at every true distance.

A booster trained on squared error predicts the posterior mean E[d | tuple]. With ~100 photons a
tuple says little about d, so that mean is pulled toward the middle of the training range: on
held-out static rulers it is ~+4 nm too high at 6-10 nm and ~-4 nm too low at 26-30 nm, while its
overall RMSE (4.3 nm) sits *below* the Cramer-Rao bound (6.2 nm), which only limits unbiased
estimators. Averaging many tuples of one ruler then converges to the wrong distance.

The fix is a monotone map g of the booster output, learned on validation rulers: with
m(d) = E[d_hat | d] (the "response curve", increasing in d), g = m^-1 undoes the shrinkage to
first order; a few fixed-point passes (lower each knot of g by the bias still measured in its
bin) remove what is left from the curvature of g. The result is unbiased per distance bin within the statistical
error and has an RMSE at the CRB, i.e. it behaves like an efficient unbiased estimator, at
booster cost. The map is a few small piecewise-linear tables applied with ``np.interp``.
"""

from __future__ import annotations

import numpy as np


def _bin_means(values: np.ndarray, y: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` and of ``y`` per bin of ``y`` (bins with no data are dropped)."""
    idx = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(idx, minlength=len(edges) - 1)
    keep = counts > 0
    mean_v = np.bincount(idx, weights=values, minlength=len(edges) - 1)[keep] / counts[keep]
    mean_y = np.bincount(idx, weights=y, minlength=len(edges) - 1)[keep] / counts[keep]
    return mean_v, mean_y


def _strictly_increasing(x: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators isotonic fit, then a tiny ramp so interpolation can invert it."""
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression().fit_transform(np.arange(len(x)), x)
    return fitted + np.arange(len(x)) * 1e-6


def _end_slopes(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Extrapolation slopes beyond the end knots: the map's mean slope over its whole range.

    Local end slopes are steep where the response curve flattens and are estimated from the
    noisiest knots; the global slope keeps the rare tuples beyond the ends from being flung away.
    """
    slope = float((y[-1] - y[0]) / (x[-1] - x[0])) if x[-1] > x[0] else 1.0
    return slope, slope


def _stage(x_knots: np.ndarray, y_knots: np.ndarray) -> dict:
    lo, hi = _end_slopes(x_knots, y_knots)
    return {"x": [float(v) for v in x_knots], "y": [float(v) for v in y_knots], "slope_lo": lo, "slope_hi": hi}


def fit(d_hat: np.ndarray, y: np.ndarray, edges: np.ndarray, iterations: int = 5) -> dict:
    """Learn the de-shrinking map from predictions ``d_hat`` of tuples with true distance ``y``.

    ``edges`` are the true-distance bins (one per distinct distance for discrete regimes). The map
    is piecewise linear with one knot per bin at x_k = E[d_hat | bin k]; its values start at the
    bin's mean distance and are then corrected by the remaining per-bin bias, ``iterations`` times.
    """
    d_hat = np.asarray(d_hat, np.float64)
    y = np.asarray(y, np.float64)
    response, centre = _bin_means(d_hat, y, edges)
    if len(response) < 2:
        raise ValueError("de-shrinking needs predictions at two or more distances")
    stage = _stage(_strictly_increasing(response), centre)
    for _ in range(iterations):
        mapped, _ = _bin_means(np.maximum(_apply_stage(d_hat, stage), 0.0), y, edges)
        values = np.asarray(stage["y"]) - (mapped - centre)
        stage = _stage(np.asarray(stage["x"]), _strictly_increasing(values))
    return {"method": "inverse response curve with iterated per-bin bias correction",
            "iterations": iterations, "stages": [stage], "clip_min_nm": 0.0}


def _apply_stage(p: np.ndarray, stage: dict) -> np.ndarray:
    x = np.asarray(stage["x"], p.dtype)
    y = np.asarray(stage["y"], p.dtype)
    out = np.interp(p, x, y).astype(p.dtype, copy=False)
    out = np.where(p < x[0], y[0] + (p - x[0]) * p.dtype.type(stage["slope_lo"]), out)
    return np.where(p > x[-1], y[-1] + (p - x[-1]) * p.dtype.type(stage["slope_hi"]), out)


def fit_by_photons(d_hat: np.ndarray, y: np.ndarray, photons: np.ndarray, edges: np.ndarray,
                   n_photon_bins: int = 5, iterations: int = 5) -> dict:
    """One map per photon-count quantile bin (shrinkage is stronger at low photon counts).

    At inference the maps of the two bins around a tuple's log N are blended linearly, so the
    estimate varies smoothly with N.
    """
    photons = np.asarray(photons, np.float64)
    cuts = np.quantile(photons, np.linspace(0, 1, n_photon_bins + 1)[1:-1])
    idx = np.searchsorted(cuts, photons, side="right")
    maps, centres = [], []
    for k in range(n_photon_bins):
        sel = idx == k
        if sel.sum() == 0:
            continue
        maps.append(fit(d_hat[sel], y[sel], edges, iterations)["stages"][0])
        centres.append(float(np.median(np.log(np.maximum(photons[sel], 1.0)))))
    return {"method": "inverse response curve with iterated per-bin bias correction, per photon bin",
            "iterations": iterations, "log_photon_centres": centres, "maps": maps, "clip_min_nm": 0.0}


def apply(d_hat: np.ndarray, params: dict | None, photons: np.ndarray | None = None) -> np.ndarray:
    """De-shrunk distance (same dtype as ``d_hat``); ``params=None`` is the identity."""
    if params is None:
        return d_hat
    if "maps" in params:
        if photons is None:
            raise ValueError("this de-shrinking map depends on the photon count: pass photons")
        centres = np.asarray(params["log_photon_centres"], np.float32)
        mapped = np.stack([_apply_stage(d_hat, m) for m in params["maps"]])  # (K, n)
        if len(centres) == 1:
            out = mapped[0]
        else:
            pos = np.interp(np.log(np.maximum(np.asarray(photons, np.float32), np.float32(1.0))), centres,
                            np.arange(len(centres), dtype=np.float32)).astype(np.float32)
            k = np.minimum(pos.astype(np.intp), len(centres) - 2)
            w = (pos - k).astype(d_hat.dtype)
            cols = np.arange(len(d_hat))
            out = (1 - w) * mapped[k, cols] + w * mapped[k + 1, cols]
    else:
        out = d_hat
        for stage in params["stages"]:
            out = _apply_stage(out, stage)
    # a negative separation is unphysical; only the far low tail of the smallest distances gets here
    return np.maximum(out, out.dtype.type(params.get("clip_min_nm", 0.0)))
