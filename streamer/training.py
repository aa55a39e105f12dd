"""Train one regime's distance models: point booster, quantile booster, CQR calibration, bundle.

Pipeline (``streamer train`` runs it per regime)::

    simulate (seed) -> split by ruler/trace: train | validation | calibration
    -> features -> point booster (squared error, early stopping on validation)
    -> interval booster (5%/95% quantiles, early stopping on validation)
    -> MAPIE CQR on calibration -> manifest + boosters in compiled_models/<regime>/

The test set used by ``streamer evaluate`` is simulated separately with another seed, so it
shares no ruler with any of these parts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import conformal, datasets, model_bundle
from .features import compute_features, feature_names

#: photon-count quantiles of the training set outside which a tuple is flagged
PHOTON_FLAG_QUANTILES = (0.005, 0.995)


@dataclass
class BoosterParams:
    max_depth: int = 6
    eta: float = 0.1
    max_rounds: int = 200
    min_child_weight: float = 50.0
    subsample: float = 0.8
    reg_lambda: float = 1.0
    max_bin: int = 256

    def xgb_params(self) -> dict:
        return {
            "max_depth": self.max_depth, "eta": self.eta, "min_child_weight": self.min_child_weight,
            "subsample": self.subsample, "lambda": self.reg_lambda, "max_bin": self.max_bin,
            "tree_method": "hist",
        }


@dataclass
class TrainConfig:
    feature_set: str = "physics"
    point: BoosterParams = field(default_factory=BoosterParams)
    interval: BoosterParams = field(default_factory=lambda: BoosterParams(max_depth=5, max_rounds=150))
    quantiles: tuple[float, float] = (0.05, 0.95)
    confidence_level: float = 0.9
    early_stopping_rounds: int = 20
    balance_classes: bool | None = None  # None: on for the dynamic regime (few discrete distances)
    nthread: int = 2
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Split:
    X: np.ndarray
    y: np.ndarray
    w: np.ndarray
    photons: np.ndarray
    trace_id: np.ndarray


def prepare_splits(data: datasets.DataConfig, names: tuple[str, ...], balance: bool) -> dict[str, Split]:
    """Simulate, split by group into train/val/cal and compute features."""
    rec = datasets.simulate_regime(data.regime, data.n_groups, data.tuples_per_group, data.seed)
    val, cal, train = datasets.group_split(rec.tuples.trace_id, (data.val_fraction, data.cal_fraction), data.seed + 1)
    X = compute_features(rec.tuples.counts, rec.tuples.positions, names)
    y = rec.truth["d_nm"].astype(np.float32)
    photons = rec.tuples.photons
    out = {}
    for name, mask in (("train", train), ("val", val), ("cal", cal)):
        w = datasets.class_balance_weights(y[mask]) if balance else np.ones(int(mask.sum()), np.float32)
        out[name] = Split(X[mask], y[mask], w, photons[mask], rec.tuples.trace_id[mask])
    return out


def _fit(params: dict, train: Split, val: Split, max_rounds: int, early_stopping: int):
    import xgboost as xgb

    dtrain = xgb.QuantileDMatrix(train.X, train.y, weight=train.w)
    dval = xgb.QuantileDMatrix(val.X, val.y, weight=val.w, ref=dtrain)
    booster = xgb.train(params, dtrain, max_rounds, evals=[(dval, "val")],
                        early_stopping_rounds=early_stopping, verbose_eval=False)
    # keep only the trees up to the best validation round: nothing unused is shipped or compiled
    best = booster.best_iteration + 1
    return booster[:best], best


def train_point(train: Split, val: Split, cfg: TrainConfig):
    params = {**cfg.point.xgb_params(), "objective": "reg:squarederror", "eval_metric": "rmse",
              "nthread": cfg.nthread, "seed": cfg.seed}
    return _fit(params, train, val, cfg.point.max_rounds, cfg.early_stopping_rounds)


def train_interval(train: Split, val: Split, cfg: TrainConfig):
    """One booster, two outputs: the lower and upper conditional quantiles."""
    params = {**cfg.interval.xgb_params(), "objective": "reg:quantileerror",
              "quantile_alpha": np.asarray(cfg.quantiles), "nthread": cfg.nthread, "seed": cfg.seed}
    return _fit(params, train, val, cfg.interval.max_rounds, cfg.early_stopping_rounds)


def cqr_estimators(point, interval, n_features: int):
    """scikit-learn views (lower, upper, point) of the two boosters, for MAPIE."""
    wrap = conformal.BoosterRegressor
    return wrap(interval, n_features, 0), wrap(interval, n_features, 1), wrap(point, n_features)


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
    splits = prepare_splits(data, names, balance)
    tr, va, ca = splits["train"], splits["val"], splits["cal"]
    log(f"[{data.regime}] {len(tr.y):,} train / {len(va.y):,} val / {len(ca.y):,} cal tuples "
        f"({len(np.unique(tr.trace_id))}/{len(np.unique(va.trace_id))}/{len(np.unique(ca.trace_id))} groups), "
        f"{len(names)} features ({cfg.feature_set}); {time.perf_counter() - t0:.1f} s")

    point, n_point = train_point(tr, va, cfg)
    log(f"[{data.regime}] point booster: {n_point} trees, depth {cfg.point.max_depth}; {time.perf_counter() - t0:.1f} s")
    interval, n_int = train_interval(tr, va, cfg)
    log(f"[{data.regime}] interval booster: {n_int} rounds x 2 quantiles, depth {cfg.interval.max_depth}; "
        f"{time.perf_counter() - t0:.1f} s")

    lower, upper, centre = cqr_estimators(point, interval, len(names))
    calibration = conformal.calibrate_cqr(lower, upper, centre, ca.X, ca.y.astype(np.float64), cfg.confidence_level)
    calibration["quantiles"] = list(cfg.quantiles)

    # validation rulers were only used to pick the number of trees, never to calibrate
    q = interval.inplace_predict(va.X)
    lo, hi = conformal.apply_cqr(q[:, 0], q[:, 1], calibration)
    metrics = {"validation": summarize(va.y, point.inplace_predict(va.X), lo, hi)}
    log(f"[{data.regime}] CQR q = {calibration['q_nm']:.3f} nm; validation {metrics['validation']}")

    photon_lo, photon_hi = np.quantile(tr.photons, PHOTON_FLAG_QUANTILES)
    manifest = {
        "regime": data.regime,
        "format_version": 1,
        "feature_set": cfg.feature_set,
        "feature_names": list(names),
        "outputs": {"point": ["distance_nm"], "interval": [f"q{a:g}" for a in cfg.quantiles]},
        "calibration": calibration,
        "flags": {
            "low_photons_below": float(photon_lo),
            "out_of_range_photons_above": float(photon_hi),
            "distance_range_nm": [float(tr.y.min()), float(tr.y.max())],
        },
        "data": {**data.to_dict(), "sizes": {k: int(len(s.y)) for k, s in splits.items()},
                 "class_balanced": balance},
        "training": {**cfg.to_dict(), "trees": {"point": n_point, "interval": n_int * len(cfg.quantiles)},
                     "xgboost_version": _xgb_version(), "seconds": round(time.perf_counter() - t0, 1)},
        "metrics": metrics,
    }
    if out_dir is not None:
        model_bundle.save_bundle(Path(out_dir), manifest, {"point": point, "interval": interval})
        log(f"[{data.regime}] wrote {out_dir}")
    manifest["_boosters"] = {"point": point, "interval": interval}
    return manifest


def _xgb_version() -> str:
    import xgboost

    return xgboost.__version__
