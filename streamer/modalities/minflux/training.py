"""Train one regime's distance model: point booster, conformal calibration, bundle.

Pipeline (``streamer train`` runs it per regime)::

    simulate (seed) -> split by ruler/trace: train | validation | calibration
    -> features -> point booster (squared error, early stopping on validation)
    -> photon exponent of the interval score (fitted on validation residuals)
    -> label-conditional conformal calibration with MAPIE on calibration rulers
    -> manifest + booster in compiled_models/minflux/<regime>/

The test set used by ``streamer evaluate`` is simulated separately with another seed, so it
shares no ruler with any of these parts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ...core import conformal, model_bundle
from ...core.training import BoosterParams, Split, fit_booster, xgb_version
from . import datasets, debias
from .features import compute_features, feature_names

#: photon-count quantiles of the training set outside which a tuple is flagged
PHOTON_FLAG_QUANTILES = (0.005, 0.995)


@dataclass
class TrainConfig:
    feature_set: str = "physics"
    point: BoosterParams = field(default_factory=BoosterParams)
    confidence_level: float = 0.9
    bin_width_nm: float = 1.0  # true-distance bins of the label-conditional calibration and de-shrinking
    debias_iterations: int | None = 5  # None: ship the posterior mean (squared-error output) as is
    # one de-shrinking map per photon-count quantile bin: shrinkage weakens with N. Static tuples
    # span a narrow photon range, where extra bins only add noise (measured), so train uses 1 there
    debias_photon_bins: int = 5
    early_stopping_rounds: int = 20
    balance_classes: bool | None = None  # None: on for the dynamic regime (few discrete distances)
    nthread: int = 2
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def prepare_splits(data: datasets.DataConfig, names: tuple[str, ...], balance: bool) -> tuple[dict[str, Split], dict]:
    """Simulate, split by group into train/val/cal and compute features; also the simulator's meta."""
    rec = datasets.simulate_regime(data.regime, data.n_groups, data.tuples_per_group, data.seed)
    val, cal, train = datasets.group_split(rec.tuples.trace_id, (data.val_fraction, data.cal_fraction), data.seed + 1)
    X = compute_features(rec.tuples.counts, rec.tuples.positions, names)
    y = rec.truth["d_nm"].astype(np.float32)
    photons = rec.tuples.photons
    out = {}
    for name, mask in (("train", train), ("val", val), ("cal", cal)):
        w = datasets.class_balance_weights(y[mask]) if balance else np.ones(int(mask.sum()), np.float32)
        out[name] = Split(X[mask], y[mask], w, photons[mask], rec.tuples.trace_id[mask])
    return out, rec.meta


def train_point(train: Split, val: Split, cfg: TrainConfig):
    params = {**cfg.point.xgb_params(), "objective": "reg:squarederror", "eval_metric": "rmse",
              "nthread": cfg.nthread, "seed": cfg.seed}
    return fit_booster(params, train, val, cfg.point.max_rounds, cfg.early_stopping_rounds)


def summarize(y: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict:
    err = d - y
    return {
        "rmse_nm": float(np.sqrt(np.mean(err**2))),
        "bias_nm": float(np.mean(err)),
        "coverage": float(np.mean((y >= lo) & (y <= hi))),
        "mean_width_nm": float(np.mean(hi - lo)),
        "n": int(len(y)),
    }


def train_regime(data: datasets.DataConfig, cfg: TrainConfig, out_dir: Path | None = None, log=print) -> dict:
    """Train, calibrate and (if ``out_dir``) save one regime's bundle; returns the manifest."""
    t0 = time.perf_counter()
    names = feature_names(cfg.feature_set)
    balance = (data.regime == "dynamic") if cfg.balance_classes is None else cfg.balance_classes
    splits, sim_meta = prepare_splits(data, names, balance)
    tr, va, ca = splits["train"], splits["val"], splits["cal"]
    log(f"[{data.regime}] {len(tr.y):,} train / {len(va.y):,} val / {len(ca.y):,} cal tuples "
        f"({len(np.unique(tr.trace_id))}/{len(np.unique(va.trace_id))}/{len(np.unique(ca.trace_id))} groups), "
        f"{len(names)} features ({cfg.feature_set}); {time.perf_counter() - t0:.1f} s")

    point, n_point = train_point(tr, va, cfg)
    log(f"[{data.regime}] point booster: {n_point} trees, depth {cfg.point.max_depth}; {time.perf_counter() - t0:.1f} s")

    # de-shrinking map and the score's photon exponent come from validation rulers, the conformal
    # quantiles from calibration rulers, so calibration data never shaped the estimator. The
    # interval score uses the posterior-mean output (see streamer.conformal for why).
    raw_val = point.inplace_predict(va.X)
    deshrink = None
    if cfg.debias_iterations is not None:
        deshrink = debias.fit_by_photons(raw_val, va.y, va.photons, conformal.label_bins(va.y, cfg.bin_width_nm),
                                         cfg.debias_photon_bins, cfg.debias_iterations)
    d_val = debias.apply(raw_val, deshrink, va.photons)
    power = conformal.fit_photon_power(raw_val - va.y, va.photons)
    calibration = conformal.calibrate(conformal.BoosterRegressor(point, len(names)), ca.X, ca.y, ca.photons,
                                      power, cfg.confidence_level, cfg.bin_width_nm)
    calibration["score_uses"] = "posterior-mean booster output (before de-shrinking)"
    lo, hi, _ = conformal.apply_intervals(raw_val, va.photons, conformal.IntervalCalibration(calibration))
    metrics = {"validation": summarize(va.y, d_val, lo, hi),
               "validation_posterior_mean_rmse_nm": float(np.sqrt(np.mean((raw_val - va.y) ** 2)))}
    log(f"[{data.regime}] photon exponent p = {power:.3f}; {len(calibration['q_bins'])} calibration bins; "
        f"validation {metrics['validation']}")

    photon_lo, photon_hi = np.quantile(tr.photons, PHOTON_FLAG_QUANTILES)
    manifest = {
        "regime": data.regime,
        "format_version": 1,
        "feature_set": cfg.feature_set,
        "feature_names": list(names),
        "outputs": {"point": ["distance_nm"]},
        "debias": deshrink,
        "calibration": calibration,
        "flags": {
            "low_photons_below": float(photon_lo),
            "out_of_range_photons_above": float(photon_hi),
            "distance_range_nm": [float(tr.y.min()), float(tr.y.max())],
        },
        "data": {**data.to_dict(), "sizes": {k: int(len(s.y)) for k, s in splits.items()},
                 "groups": {k: int(len(np.unique(s.trace_id))) for k, s in splits.items()},
                 "class_balanced": balance, "simulator": sim_meta},
        "training": {**cfg.to_dict(), "trees": {"point": n_point},
                     "xgboost_version": xgb_version(), "seconds": round(time.perf_counter() - t0, 1)},
        "metrics": metrics,
    }
    if out_dir is not None:
        manifest = model_bundle.save_bundle(Path(out_dir), manifest, {"point": point})
        log(f"[{data.regime}] wrote {out_dir}")
    manifest["_boosters"] = {"point": point}
    return manifest
