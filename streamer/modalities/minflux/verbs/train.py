"""``streamer train``: simulate, train and calibrate the shipped models (compiled_models/<regime>/)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train + conformally calibrate the static/dynamic distance models from simulated rulers"

#: the sizes the shipped bundles were trained with (3.6M / 1.5M two-on tuples, ~2 min on 2 cores)
REGIME_DEFAULTS = {
    "static": {"n_groups": 45000, "tuples_per_group": 80, "seed": 20261123, "photon_bins": 1},
    "dynamic": {"n_groups": 5000, "tuples_per_group": 500, "seed": 20261124, "photon_bins": 5},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--regime", nargs="+", default=["static", "dynamic"], choices=[*REGIME_DEFAULTS, "general"],
                   help="'general': the instrument-aware model (continuous d, v0/b/L/2 inputs; ~30 min on 2 cores: "
                        "boosters, the first de-shrinking stage, the deconvolution's ~6 x 10^8 simulated rulers "
                        "~21 min)")
    p.add_argument("--out", default=None, help="bundle root (default: the repository's compiled_models/)")
    p.add_argument("--n-groups", type=int, default=None, help="rulers (static) / traces (dynamic) to simulate")
    p.add_argument("--tuples-per-group", type=int, default=None)
    p.add_argument("--seed", type=int, default=None, help="data seed (default: the shipped models' seed)")
    p.add_argument("--feature-set", default="physics", choices=["published", "physics", "closed-form", "all"])
    p.add_argument("--max-depth", type=int, default=4)
    p.add_argument("--max-rounds", type=int, default=100, help="upper bound on trees (early stopping picks)")
    p.add_argument("--eta", type=float, default=0.3)
    p.add_argument("--bin-width", type=float, default=1.0, help="nm, true-distance bins of the calibration")
    p.add_argument("--photon-bins", type=int, default=None,
                   help="photon-count bins of the de-shrinking map (default: 1 static, 5 dynamic)")
    p.add_argument("--no-debias", action="store_true", help="ship the posterior mean (biased toward mid-range)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--instrument", default=None, metavar="PROFILE.toml",
                   help="train the instrument-aware model for this profile (v0 +- 0.03, background x/÷ 1.3, L/2 +- 2 nm "
                        "around it; ~5 min on 2 cores: boosters and four de-shrinking stages); writes "
                        "compiled_models/minflux/general-<name> (or --out)")
    p.add_argument("--info-bins", type=int, default=None,
                   help="with --instrument: information bins of the pooled conformal cells a sparse (v0 x background x "
                        "photon) cell falls back on (default 16; fewer for small --n-groups: every cell needs >= 100 "
                        "calibration tuples per 2 nm distance bin)")


def run(args: argparse.Namespace) -> int:
    from ....core import model_bundle
    from .. import datasets, training

    root = Path(args.out) if args.out else model_bundle.DEFAULT_MODELS_DIR / "minflux"
    if args.instrument:
        return _train_for_profile(args)
    for regime in args.regime:
        if regime == "general":
            from .. import general

            cfg = general.GeneralConfig(nthread=args.threads)
            if args.seed is not None:
                cfg.seed = args.seed
            if args.n_groups:
                cfg.scale_rulers(args.n_groups)
            general.train_general(cfg, root / "general")
            continue
        d = REGIME_DEFAULTS[regime]
        data = datasets.DataConfig(
            regime=regime,
            n_groups=args.n_groups or d["n_groups"],
            tuples_per_group=args.tuples_per_group or d["tuples_per_group"],
            seed=d["seed"] if args.seed is None else args.seed,
        )
        cfg = training.TrainConfig(
            feature_set=args.feature_set,
            point=training.BoosterParams(max_depth=args.max_depth, eta=args.eta, max_rounds=args.max_rounds),
            bin_width_nm=args.bin_width,
            debias_iterations=None if args.no_debias else training.TrainConfig.debias_iterations,
            debias_photon_bins=args.photon_bins or d["photon_bins"],
            nthread=args.threads,
        )
        training.train_regime(data, cfg, root / regime)
    return 0


def _train_for_profile(args: argparse.Namespace) -> int:
    """``--instrument``: one bundle for the profile (``--out`` is then the bundle directory)."""
    import time

    from ....core import model_bundle, profile, registry
    from ..profiles import train_for_profile

    inst = profile.load(args.instrument, registry.get)
    if inst.modality != "minflux":
        raise ValueError(f"{args.instrument} is a {inst.modality} profile")
    out = Path(args.out) if args.out else model_bundle.DEFAULT_MODELS_DIR / "minflux" / f"general-{inst.name}"
    kw = {"n_rulers": args.n_groups} if args.n_groups else {}
    if args.seed is not None:
        kw["seed"] = args.seed
    if args.info_bins:
        kw["neff_bins"] = args.info_bins
    t0 = time.time()
    m = train_for_profile(inst, out, nthread=args.threads, **kw)
    cov = m["instrument"]["covers"]
    print(f"trained for {inst.name} (hash {inst.hash}) in {time.time() - t0:.0f} s: {out}")
    print("covers " + ", ".join(f"{k} {lo:g}-{hi:g}" for k, (lo, hi) in cov.items())
          + f"; validation RMSE {m['metrics']['validation']['rmse_nm']:.2f} nm, coverage "
          f"{m['metrics']['validation']['coverage']:.3f}")
    print(f"workers started with --instrument {args.instrument} serve it (compile it here: `streamer compile`)")
    return 0
