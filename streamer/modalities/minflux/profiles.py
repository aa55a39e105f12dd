"""Instrument profiles for MINFLUX (issue 14): calibrate a profile from a recording, train a bundle
for a profile, simulate an instrument's acquisition.

* :func:`self_calibrate`: the live self-calibration of the ``general`` predictor (segmentation into
  2-on / 1-on / background-only, b from background-only tuples, v0 from 1-on tuples; :mod:`.live`)
  run over a whole recording, plus L/2 from the beam positions (exact: the pattern is known);
* :func:`train_for_profile`: the instrument-aware model trained over a narrow space around the
  profile (:func:`.instrument.space_ranges`), its manifest recording the profile hash and the
  ranges it covers;
* :func:`simulate_stream`: dynamic traces (2-on -> 1-on -> background) of one instrument.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .instrument import MODEL_WAVELENGTH_NM, WAVELENGTH_TOL, space_ranges


def simulate_stream(v0: float, background: float, half_l: float, n_traces: int = 9, tuples_per_trace: int = 4000,
                    seed: int = 0, distances=(5.0, 8.0, 10.0, 12.5, 17.5, 25.0, 35.0, 45.0, 55.0),
                    photons_mean: float = 198.0):
    """One stream of one instrument: ``n_traces`` dynamic traces, distances cycling over ``distances``."""
    from .recording import Recording
    from .simulate import DynamicParams, InstrumentParams, simulate_dynamic
    from .tuples import TupleBatch

    inst = InstrumentParams(half_l_nm=half_l, v0=v0, background_range=(background, background))
    recs = [simulate_dynamic(1, tuples_per_trace, seed * 1000 + i, inst,
                             DynamicParams(distances_nm=(distances[i % len(distances)],), photons_mean=photons_mean))
            for i in range(n_traces)]
    t = [r.tuples for r in recs]
    batch = TupleBatch.build(np.concatenate([x.counts for x in t]), np.concatenate([x.positions for x in t]),
                             np.repeat(np.arange(n_traces, dtype=np.int64), tuples_per_trace),
                             np.concatenate([x.time_s + i * tuples_per_trace * 1e-3 for i, x in enumerate(t)]))
    truth = {k: np.concatenate([r.truth[k] for r in recs]) for k in recs[0].truth}
    return Recording(batch, truth, {"regime": "dynamic", "instrument": {"v0": v0, "background": background,
                                                                        "half_l": half_l}, "seed": seed})


def background_guess(batch, window: int = 40, quantile: float = 0.02) -> float:
    """A starting background (counts/exposure) from the data: the low quantile of 40-tuple window
    means of the total counts, / 6. Background-only windows are the dimmest; with none it errs high,
    and the segmentation then finds no background segment (reported as not calibrated)."""
    n = batch.counts.sum(axis=(1, 2), dtype=np.int64).astype(np.float64)
    if len(n) < window:
        return float(np.mean(n) / 6.0)
    cs = np.concatenate([[0.0], np.cumsum(n)])
    means = (cs[window:] - cs[:-window]) / window
    return float(max(np.quantile(means, quantile), 0.0) / 6.0)


def self_calibrate(batch, packet: int = 1000, bundle: str = "general", passes: int = 2) -> dict:
    """Fit v0, background (with standard errors) and L/2 from a recording's tuples in acquisition
    order, exactly as a self-calibrating worker would (one process seeing the whole stream).

    The live segmentation separates background-only windows by their level above 6 b, so it needs a
    background of the right order to start from: the first pass starts from :func:`background_guess`
    (a worker starts from b = 1, which at b = 10 finds no background segment at all, measured), the
    second from the first pass's fit."""
    from .tuples import half_l_of
    from .live import LivePredictor, _Stream

    prior_bg = background_guess(batch)
    for _ in range(passes):
        lp = LivePredictor(bundle, v0=None, background=None)
        lp.fixed_v0 = lp.fixed_bg = None  # the calibration must not take STREAMER_MINFLUX_* overrides
        lp.streams["calibrate"] = _Stream(0.9, max(prior_bg, 1e-3), lp.window, lp.block, lp.sys_nm)
        states = np.empty(len(batch), np.uint8)
        for i in range(0, len(batch), packet):
            states[i:i + packet] = lp.process("calibrate", batch[i:i + packet])["state"]
        cal = lp.streams["calibrate"].cal
        if not cal.calibrated:
            break
        prior_bg = cal.background
    hl = half_l_of(batch.positions).astype(np.float64)
    return {"v0": float(cal.v0), "v0_se": float(cal.v0_se), "background": float(cal.background),
            "background_se": float(cal.background_se), "calibrated": bool(cal.calibrated),
            "background_start": float(background_guess(batch)),
            "half_l": float(np.median(hl)), "half_l_sd": float(np.std(hl)), "tuples": len(batch),
            "states": {name: int(np.sum(states == s)) for name, s in (("two-on", 2), ("one-on", 1), ("background", 0))}}


def check_trainable(profile) -> None:
    """Profiles this code cannot simulate: another wavelength (a constant of the forward model)."""
    lam = profile["wavelength_nm"]
    if abs(lam / MODEL_WAVELENGTH_NM - 1) > WAVELENGTH_TOL:
        raise ValueError(f"profile {profile.name!r}: wavelength {lam:g} nm; the simulator and features assume "
                         f"{MODEL_WAVELENGTH_NM:g} nm, so no bundle can be trained for it yet")


#: rulers of each de-shrinking stage of a bundle trained for one profile (the shipped bundle: 7.5 M)
PROFILE_DESHRINK_RULERS = 1_500_000


def train_for_profile(profile, out_dir: Path | None, n_rulers: int | None = None, seed: int = 20261414,
                      nthread: int = 2, progress: bool = True, log=print, **cfg) -> dict:
    """The instrument-aware model trained for ``profile``: same architecture and recipe as the
    shipped ``general`` bundle (ruler split, point + noise boosters, Mondrian conformal per v0 x
    background x photon class, sparse cells per information bin; ``n_rulers`` None: as many rulers),
    on v0 / background / L/2 drawn around the profile; the manifest's ``instrument`` entry records
    the profile (name, hash, values, provenance) and covered ranges."""
    from ...core.profile import Coverage
    from .general import GeneralConfig, Space, train_general

    check_trainable(profile)
    cover, train = space_ranges(profile)
    space = replace(Space(), v0_range=train["v0"], background_range=train["background"], half_l_range_nm=train["half_l"])
    config = GeneralConfig(seed=seed, nthread=nthread, space=space)
    # the profile's (v0, b, L/2) space is ~100x smaller than the shipped bundle's: a fifth of its
    # de-shrinking rulers is still ~20x denser. Measured on bench/profiles.py's B: 286 s instead of
    # 1,219 s of training, 7 of 8 cells either way (max |bias| 1.56 against 1.51 nm)
    config.deshrink_rulers = config.deshrink_later_rulers = PROFILE_DESHRINK_RULERS
    # the deconvolution simulates every node of the full table (~20 min on 2 cores), most of them
    # outside a profile's space: a profile's bundle serves its de-shrinking stages
    config.deconvolution_rulers_per_cell = 0
    # the profile's L/2 spans ~5 nm: one L/2 class (cells split further would fall back on the pooled ones)
    config.interval_half_l_cuts = ()
    if n_rulers is not None:
        config.scale_rulers(n_rulers)
    for k, v in cfg.items():
        setattr(config, k, v)
    cov = Coverage("minflux", cover, profile.name, profile.hash)
    entry = {**cov.to_manifest(), "values": dict(profile.values), "provenance": dict(profile.provenance),
             "trained_over": {k: list(v) for k, v in train.items()}}
    bar = None
    if progress:
        from tqdm import tqdm

        # train_general logs once per stage: simulate+split, point booster, noise booster, calibration,
        # response tables (simulate, booster; per stage), save
        stages = (5 if out_dir is not None else 4) + (2 if config.deshrink_rulers > 0 else 0) + (
            2 * len(config.deshrink_later_keeps) if config.deshrink_rulers > 0 and config.deshrink_later_rulers > 0
            and (config.deconvolution_rulers_per_cell <= 0 or out_dir is None) else 0)
        bar = tqdm(total=stages, desc=f"train minflux for {profile.name}", unit="stage")

    def step(msg: str) -> None:
        if bar is not None:
            bar.set_postfix_str(msg.split("]")[-1].strip()[:60])
            bar.update(1)
        else:
            log(msg)

    t0 = time.perf_counter()
    try:
        manifest = train_general(config, out_dir, log=step, instrument=entry)
    finally:
        if bar is not None:
            bar.close()
    manifest["_seconds"] = time.perf_counter() - t0
    return manifest
