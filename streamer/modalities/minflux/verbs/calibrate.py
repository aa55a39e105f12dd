"""``streamer calibrate --modality minflux DATA --out PROFILE.toml``: the instrument from the stream itself.

DATA is a recording (replay .npz, Abberior .npy/.mat export, Hensel parsed.pkl) holding traces that
bleach (2-on -> 1-on -> background-only, as every MINFLUX ruler measurement does): the live
self-calibration of the ``general`` predictor runs over it in acquisition order and gives v0 (from
the 1-on segments, where the visibility is v0) and the background (from the background-only ones),
each with its standard error; L/2 comes from the beam positions. The wavelength cannot be measured
from counts: it is kept from ``--base`` (default nominal).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from ....core.profile import add_output_arguments

HELP = "fit an instrument profile (v0, background, L/2) from a MINFLUX recording (self-calibration)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="recording: replay .npz, Abberior .npy/.mat, Hensel parsed.pkl (traces that bleach)")
    add_output_arguments(p)
    p.add_argument("--format", default="auto", choices=["auto", "hensel", "abberior", "replay"])
    p.add_argument("--half-l-nm", type=float, default=None, help="Abberior exports without beam positions: L/2")
    p.add_argument("--packet", type=int, default=1000, help="tuples per packet of the replay (as a worker sees them)")


def run(args: argparse.Namespace) -> int:
    from ....core import profile, registry
    from ..loaders import load_any
    from ..profiles import self_calibrate

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ValueError(f"{out} exists (--force to overwrite)")
    opts = {"half_l_nm": args.half_l_nm} if args.half_l_nm is not None else {}
    rec = load_any(args.data, args.format, **opts)
    if len(rec) < 1000:
        raise ValueError(f"{args.data}: {len(rec)} tuples; self-calibration needs thousands (traces that bleach)")
    t0 = time.time()
    fit = self_calibrate(rec.tuples, args.packet)
    mod = registry.get("minflux")
    base = profile.load(args.base, registry.get) if args.base else profile.nominal(mod)
    if base.modality != "minflux":
        raise ValueError(f"{args.base} is a {base.modality} profile")
    s = fit["states"]
    print(f"{fit['tuples']:,} tuples: segmented {s['two-on']:,} two-on, {s['one-on']:,} one-on, "
          f"{s['background']:,} background-only ({time.time() - t0:.1f} s)")
    print(f"v0         = {fit['v0']:.4f} +- {fit['v0_se']:.4f}  (1-on segments)")
    print(f"background = {fit['background']:.3f} +- {fit['background_se']:.3f} counts/exposure  (background-only segments)")
    print(f"L/2        = {fit['half_l']:.3f} nm (sd over tuples {fit['half_l_sd']:.3f}; beam positions)")
    if not fit["calibrated"]:
        raise ValueError("not enough one-on and background-only tuples to calibrate (the traces must bleach: "
                         "2-on -> 1-on -> background); nothing written")
    src = f"calibrate {Path(args.data).name} {time.strftime('%Y-%m-%d')}"
    prof = base.with_values({"v0": min(fit["v0"], 1.0), "background": fit["background"]},
                            f"{src} (self-calibration; se v0 {fit['v0_se']:.4f}, b {fit['background_se']:.3f})",
                            args.name or out.stem)
    prof = prof.with_values({"half_l": round(fit["half_l"], 4)}, f"{src} (beam positions)")
    profile.parse(prof.to_toml(), registry.get, str(out))  # the file must pass its own validation
    prof.save(out)
    print(prof.summary(mod.profile))
    print(f"wrote {out}; next: streamer train --modality minflux --instrument {out}")
    return 0
