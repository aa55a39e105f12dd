"""``streamer train --modality smlm3d --instrument PROFILE.toml``: the trees bundle for one instrument.

The shipped recipe (:func:`.train.train_bundle`, structure-sampled, all three SNR levels, densities
log-uniform 0.3-16 per frame) on simulations of the profile's instrument (its calibration curve,
pixel size and camera), with the shipped bundles' set size (:data:`PROFILE_CONFIG`: 320 training chunks of
50 frames + 240 sparse tuning chunks + 640 fresh calibration chunks; ~3-5 minutes on 2 cores, measured in
bench/profiles.py). The manifest records the profile (name, hash, values, provenance)
and the ranges it covers (:func:`.instrument.coverage_around`).
"""

from __future__ import annotations

import time
from pathlib import Path

#: the profile recipe = the shipped one (``streamer train --modality smlm3d`` defaults)
PROFILE_CONFIG = {"n_chunks": 320, "cal_factor": 2.0, "rounds": 60}
#: plumbing only (tests): seconds, not accuracy
TINY_CONFIG = {"n_chunks": 8, "cal_factor": 0.5, "rounds": 8}


def train_for_profile(profile, out_dir: Path, config: dict | None = None, seed: int = 0, progress: bool = False,
                      nthread: int = 2) -> tuple[dict, float]:
    """Train, calibrate (conformal) and write the bundle for ``profile``; (manifest, seconds)."""
    from .instrument import camera_of, coverage_around, psf_of
    from .train import SPARSE_FACTOR, train_bundle

    cfg = {**PROFILE_CONFIG, **(config or {})}
    entry = {**coverage_around(profile).to_manifest(), "values": dict(profile.values),
             "provenance": dict(profile.provenance)}
    out_dir = Path(out_dir)
    n_chunks = int(cfg["n_chunks"])
    n_sim = n_chunks + int(round(cfg["cal_factor"] * n_chunks)) + int(round(SPARSE_FACTOR * n_chunks))
    bar = tick = None
    if progress:
        from tqdm import tqdm

        # one step per simulated + localized chunk (training, sparse tuning and calibration sets): most of the time
        bar = tqdm(total=n_sim, desc=f"train smlm3d for {profile.name}", unit="chunk")
        tick = bar.update
    t0 = time.time()
    try:
        manifest = train_bundle("structure", out_dir.name, n_chunks=n_chunks, seed=seed, rounds=int(cfg["rounds"]),
                                out_root=out_dir.parent, verbose=False, cal_factor=float(cfg["cal_factor"]),
                                psf=psf_of(profile), camera=camera_of(profile), pixel_nm=float(profile["pixel_nm"]),
                                instrument=entry, progress=tick, nthread=nthread)
    finally:
        if bar is not None:
            bar.close()
    return manifest, time.time() - t0
