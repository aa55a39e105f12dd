"""``streamer train --modality electron --instrument PROFILE.toml``: the trees bundle for one instrument.

The shipped recipe (:func:`.model.train`) on simulations of the profile's instrument (its event
physics: pixel pitch, beam energy, layer; its camera: read noise, gain, offset), with a smaller
training set than the shipped bundle's so that it fits in ~10 minutes on 2 cores (:data:`PROFILE_CONFIG`:
one 20,000-event library of that instrument and half the training frames; the shipped calibration, with
its extra 40,000-event library of that instrument). The bundle's
manifest records the profile (name, hash, values, provenance) and the ranges it covers
(:func:`.instrument.coverage_around`).
"""

from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path

#: the profile recipe (the shipped one: 24k/48k/24k/6k/42k frames and two more 40k-event libraries,
#: training and calibration; a profile's bundle gets fewer training frames and no extra training
#: library, but the shipped calibration: with 118k events of 3,000 calibration tracks the per-cell conformal
#: levels chased their sampling noise (measured on A); with 474k events B's charge deciles read 0.894-0.906
#: instead of 0.891-0.918)
PROFILE_CONFIG = {"library_n": 20000, "keep_frames": 12000, "train_frames": 24000, "scale_frames": 6000,
                  "cal_frames": 6000, "cal_extra_frames": 42000, "extra_train": (), "extra_cal": ((103, 40000),),
                  "merge_frames": 6000, "merge_dense_frames": 12, "specialist_frames": 24000}
#: plumbing only (tests): seconds, not accuracy
TINY_CONFIG = {"library_n": 1500, "keep_frames": 300, "train_frames": 600, "scale_frames": 300, "cal_frames": 300,
               "cal_extra_frames": 0, "extra_train": (), "extra_cal": (), "rounds": 10, "keep_rounds": 10,
               "scale_rounds": 10, "merge_frames": 300, "merge_dense_frames": 1, "merge_rounds": 10,
               "specialist_frames": 0, "specialist_depth": 3,
               "cells": (("q_th", 2), ("npix_th", 1), ("scale", 2))}


def config_for(profile, overrides: dict | None = None):
    """The :class:`.model.TrainConfig` simulating ``profile``'s instrument."""
    from .instrument import camera_of, physics_of
    from .model import TrainConfig

    phys = physics_of(profile)
    known = {f.name for f in fields(TrainConfig)}
    extra = {k: v for k, v in (overrides or {}).items() if k in known}
    return TrainConfig(**{**extra, "physics": {"energy_kev": phys.energy_kev, "layer_um": phys.layer_um,
                                               "pixel_um": phys.pixel_um}, **camera_of(profile)})


def train_for_profile(profile, out_dir: Path, overrides: dict | None = None, progress: bool = False,
                      log=print) -> tuple[dict, float]:
    """Train, calibrate (conformal) and write the bundle for ``profile``; (manifest, seconds)."""
    from .instrument import coverage_around
    from .model import train

    cfg = config_for(profile, overrides)
    entry = {**coverage_around(profile).to_manifest(), "values": dict(profile.values),
             "provenance": dict(profile.provenance)}
    bar = None
    if progress:
        from tqdm import tqdm

        # the recipe's stages, each announced by one log line: classifier, (pair classifier),
        # training set, point boosters, (easy-event boosters), detection cut, conformal calibration
        stages = 5 + (cfg.merge_rounds > 0) + (cfg.specialist_quantile > 0)
        bar = tqdm(total=stages, desc=f"train electron for {profile.name}", unit="stage")

        def log(msg: str, _bar=bar) -> None:  # noqa: F811 - the bar replaces the plain log
            _bar.update(1)
            _bar.set_postfix_str(msg[:70])

    t0 = time.time()
    try:
        manifest = train(cfg, Path(out_dir), log=log, instrument=entry)
    finally:
        if bar is not None:
            bar.close()
    return manifest, time.time() - t0
