"""The learned path: XGBoost on log D from per-stack features, Mondrian-conformal intervals, bundle I/O.

Bundle: ``compiled_models/diffusion/trees/`` = ``manifest.json`` + ``point.ubj`` (ln D) + ``scale.ubj``
(expected |ln residual| from the features and the point prediction; XGBoost UBJSON).
Manifest: ``modality``, ``model``, ``feature_names``, ``booster``, ``sha256``, ``calibration``
(:class:`~.conformal.Mondrian`), ``optics`` (the simulator's acquisition parameters), ``ranges``
(D and photons trained on), ``training`` (booster parameters), ``data`` (sizes, seeds), ``metrics``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from . import dataset as DS
from .conformal import Mondrian, fit_mondrian
from .features import FEATURE_NAMES
from .physics import Optics

MODELS_DIR = Path(__file__).resolve().parents[3] / "compiled_models" / "diffusion"
DEFAULT_BUNDLE = MODELS_DIR / "trees"
PARAMS = dict(objective="reg:squarederror", max_depth=6, eta=0.06, subsample=0.8, colsample_bytree=0.8,
              min_child_weight=5, tree_method="hist")
SCALE_PARAMS = dict(objective="reg:squarederror", max_depth=4, eta=0.05, subsample=0.8, min_child_weight=20,
                    tree_method="hist")
SCALE_ROUNDS = 150
MIN_SCALE = 0.02  #: floor of the predicted |ln residual| (keeps scores finite)


def scale_features(X: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Rows of the scale model: the features plus the point prediction (ln D)."""
    return np.ascontiguousarray(np.column_stack([X, mu]).astype(np.float32))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fit_booster(X: np.ndarray, log_d: np.ndarray, rounds: int = 500, nthread: int = 2, **params):
    import xgboost as xgb

    p = {**PARAMS, **params, "nthread": nthread}
    return xgb.train(p, xgb.DMatrix(X, label=log_d), rounds)


def train(out_dir: Path = DEFAULT_BUNDLE, n_train: int = 30000, n_cal: int = 16000, seed: int = 1,
          rounds: int = 350, nthread: int = 2, op: Optics | None = None, log=print, instrument=None,
          progress: bool = False, fwhm_tol: float = 0.06) -> dict:
    """Simulate, fit, calibrate and write a bundle; returns the manifest.

    ``instrument``: an :class:`~streamer.core.profile.InstrumentProfile` to train for (its optics
    replace ``op``; the PSF width is drawn within +-``fwhm_tol`` of its FWHM); the bundle records it
    and the parameter ranges it covers."""
    fwhm_range = DS.TRAIN_FWHM
    if instrument is not None:
        from .instrument import optics_of_profile

        op = optics_of_profile(instrument)
        fwhm_range = (op.fwhm_nm * (1 - fwhm_tol), op.fwhm_nm * (1 + fwhm_tol))
    op = op or Optics()
    t0 = time.time()
    tr = DS.make_random(seed, n_train, op, fwhm_range=fwhm_range, progress=progress and "train set")
    log(f"train set: {n_train} stacks in {time.time() - t0:.0f} s")
    cal = DS.make_random(seed + 1, n_cal, op, fwhm_range=fwhm_range, progress=progress and "calibration set")
    log(f"calibration set: {n_cal} stacks in {time.time() - t0:.0f} s")
    bst = fit_booster(tr.X, np.log(tr.d), rounds=rounds, nthread=nthread)
    log(f"booster: {rounds} rounds in {time.time() - t0:.0f} s")
    mu = bst.inplace_predict(cal.X).astype(np.float64)
    res = np.abs(mu - np.log(cal.d))
    # first half of the calibration stacks: the scale model; second half: the conformal quantiles
    half = n_cal // 2
    a, b = slice(0, half), slice(half, n_cal)
    scale_bst = fit_booster(scale_features(cal.X[a], mu[a]), res[a], rounds=SCALE_ROUNDS, nthread=nthread,
                            **SCALE_PARAMS)
    sc = np.maximum(scale_bst.inplace_predict(scale_features(cal.X[b], mu[b])), MIN_SCALE)
    mond = fit_mondrian(mu[b], np.log(cal.d[b]), cal.photons_hat[b], alpha=0.1, n_d=3, n_p=3, scale=sc)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    booster_path = out_dir / "point.ubj"
    bst.save_model(str(booster_path))
    scale_path = out_dir / "scale.ubj"
    scale_bst.save_model(str(scale_path))
    hw = mond.half_width(mu[b], cal.photons_hat[b], sc)
    manifest = {
        "modality": "diffusion", "model": "trees", "format_version": 1,
        "feature_names": list(FEATURE_NAMES), "booster": booster_path.name, "scale_booster": scale_path.name,
        "min_scale": MIN_SCALE,
        "target": "log(D / (um^2/s))",
        "calibration": mond.to_json(),
        "optics": op.asdict(),
        "ranges": {"d_um2_s": list(DS.TRAIN_D), "photons": list(DS.TRAIN_PHOTONS),
                   "background": list(DS.BACKGROUND), "psf_fwhm_nm": list(fwhm_range)},
        "training": {**PARAMS, "rounds": rounds, "scale": {**SCALE_PARAMS, "rounds": SCALE_ROUNDS}},
        "data": {"n_train": n_train, "n_cal": n_cal, "seed_train": seed, "seed_cal": seed + 1,
                 "cal_split": "first half: scale model; second half: conformal quantiles"},
        "metrics": {"cal_median_abs_log": float(np.median(res)),
                    "cal_coverage_in_sample": float(np.mean(res[b] <= hw))},
        "sha256": {p.name: _sha(p) for p in (booster_path, scale_path)},
    }
    if instrument is not None:
        from .instrument import coverage

        cov = coverage(manifest)  # the optics' tolerances, with the drawn PSF range
        manifest["instrument"] = {**cov.to_manifest(), "profile": instrument.name, "hash": instrument.hash,
                                  "values": dict(instrument.values), "provenance": dict(instrument.provenance)}
    manifest["training"]["seconds"] = round(time.time() - t0, 1)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"wrote {out_dir} ({booster_path.stat().st_size / 1e6:.2f} MB booster) in {time.time() - t0:.0f} s")
    return manifest


def load_manifest(bundle: Path = DEFAULT_BUNDLE, verify: bool = True) -> dict:
    bundle = Path(bundle)
    path = bundle / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no diffusion model at {bundle}; run `streamer train --modality diffusion`")
    m = json.loads(path.read_text())
    if m.get("modality") != "diffusion":
        raise ValueError(f"{path}: not a diffusion model bundle")
    if verify:
        for name, digest in m["sha256"].items():
            if _sha(bundle / name) != digest:
                raise ValueError(f"{bundle / name}: sha256 does not match the manifest")
    if list(m["feature_names"]) != list(FEATURE_NAMES):
        raise ValueError(f"{path}: trained on other features than this code computes; retrain")
    m["_dir"] = str(bundle)
    return m


def model_id(manifest: dict) -> str:
    return f"diffusion-trees-{manifest['sha256'][manifest['booster']][:12]}"


def calibration(manifest: dict) -> Mondrian:
    return Mondrian.from_json(manifest["calibration"])
