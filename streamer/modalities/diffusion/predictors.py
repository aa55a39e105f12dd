"""Predictors served by workers: ``msd`` and ``cve`` (track baselines) and ``trees`` (compiled model).

All share one measurement pass (:func:`~.localize.measure`, vectorized over the packet's stacks)
and return per stack: ``D``, ``D_lo``, ``D_hi`` (um^2/s), ``photons`` (measured per frame) and
``flags`` (bit 0 out of the trained range, bit 1 too few photons).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import estimators as E
from .features import features, positions_nm
from .localize import Spots, measure
from .model import scale_features
from .instrument import coverage
from .physics import Optics, blur_r

FLAG_RANGE, FLAG_PHOTONS = 1, 2
MIN_PHOTONS = 100.0  #: measured photons per frame below which a stack is flagged
Z90 = 1.6448536269514722
SUB = 10  #: sub-positions per exposure of the simulator (R = 0.165 vs 1/6 for a continuous exposure)


def optics_of(header: dict, psf_fwhm_nm: float = 250.0) -> Optics:
    """Acquisition parameters from a packet header (exposure_s 0 means = frame_s)."""
    exp = float(header.get("exposure_s") or 0.0) or float(header["frame_s"])
    return Optics(frames=2, pixel_nm=float(header["pixel_nm"]), frame_s=float(header["frame_s"]),
                  exposure_s=exp, sub=SUB, fwhm_nm=psf_fwhm_nm)


def _spots(packet) -> tuple[Spots, Optics]:
    h = packet.header
    sp = measure(np.asarray(packet.arrays["stacks"]), float(h["baseline"]), float(h["adu_per_photon"]))
    return sp, optics_of(h)


def _common_flags(photons: np.ndarray) -> np.ndarray:
    return np.where(photons < MIN_PHOTONS, FLAG_PHOTONS, 0).astype(np.uint8)


class TrackBaseline:
    """``msd``: trajectory-D (MSD line fit, lags 1-4); ``cve``: Vestergaard's CVE. Intervals are the
    plug-in +-1.645 sd of the CVE variance formula (approximate, not calibrated)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.model_id = f"diffusion-{method}"

    def estimate(self, sp: Spots, op: Optics) -> tuple[np.ndarray, np.ndarray]:
        pos = positions_nm(sp, op.pixel_nm)
        r = blur_r(op)
        d_cve, s2 = E.cve(pos, op.frame_s, r)
        d = E.msd_d(pos, op.frame_s) if self.method == "msd" else d_cve
        sd = np.sqrt(E.cve_var(d, np.maximum(s2, 0.0), op.frame_s, r, pos.shape[1] - 1))
        return d, sd

    def predict(self, packet) -> dict[str, np.ndarray]:
        sp, op = _spots(packet)
        d, sd = self.estimate(sp, op)
        flags = _common_flags(sp.total.mean(1))
        flags |= np.where(d <= E.D_FLOOR, FLAG_RANGE, 0).astype(np.uint8)
        dd = np.maximum(d, E.D_FLOOR)
        return {"D": dd.astype(np.float32), "D_lo": np.maximum(d - Z90 * sd, E.D_FLOOR).astype(np.float32),
                "D_hi": np.maximum(d + Z90 * sd, 2 * E.D_FLOOR).astype(np.float32),
                "photons": sp.total.mean(1).astype(np.float32), "flags": flags}


class TreesPredictor:
    """XGBoost on log D (compiled with TL2cgen via :mod:`streamer.core.backends`) + Mondrian intervals."""

    def __init__(self, bundle: str | Path | None = None, backend: str | None = None, nthread: int = 1) -> None:
        from streamer.core.backends import load_backend

        from .model import DEFAULT_BUNDLE, calibration, load_manifest, model_id

        self.manifest = load_manifest(Path(bundle) if bundle else DEFAULT_BUNDLE)
        kind = backend or os.environ.get("STREAMER_DIFFUSION_BACKEND", "compiled")
        d = Path(self.manifest["_dir"])
        self.backend = load_backend(d / self.manifest["booster"], kind=kind, nthread=nthread)
        self.scale = load_backend(d / self.manifest["scale_booster"], kind=kind, nthread=nthread)
        self.min_scale = float(self.manifest["min_scale"])
        self.cal = calibration(self.manifest)
        self.model_id = model_id(self.manifest) + ("" if kind == "compiled" else f"-{kind}")
        o = self.manifest["optics"]
        self.train_optics = (o["pixel_nm"], o["frame_s"], (o["exposure_s"] or o["frame_s"]) / o["frame_s"])
        self.psf_fwhm = float(o["fwhm_nm"])
        self.d_range = self.manifest["ranges"]["d_um2_s"]
        self.p_range = self.manifest["ranges"]["photons"]
        self.coverage = coverage(self.manifest)

    def features(self, packet) -> tuple[np.ndarray, np.ndarray, Optics]:
        h = packet.header
        op = optics_of(h, self.psf_fwhm)
        sp = measure(np.asarray(packet.arrays["stacks"]), float(h["baseline"]), float(h["adu_per_photon"]))
        X = features(sp, op.pixel_nm, op.frame_s, op.exposure, blur_r(op), op.psf_sigma_nm)
        return X, sp.total.mean(1), op

    def predict(self, packet) -> dict[str, np.ndarray]:
        X, photons, op = self.features(packet)
        mu = self.backend.predict(X).astype(np.float64)
        sc = np.maximum(self.scale.predict(scale_features(X, mu)).astype(np.float64), self.min_scale)
        q = self.cal.half_width(mu, photons, sc)
        flags = _common_flags(photons)
        # out of range: acquisition unlike training (5% tolerance), or estimate/photons outside it
        pix, fs, ratio = self.train_optics
        same = (abs(op.pixel_nm / pix - 1) < 0.05 and abs(op.frame_s / fs - 1) < 0.05
                and abs(op.exposure / op.frame_s / ratio - 1) < 0.05)
        d = np.exp(mu)
        bad = np.bool_(not same) | (d < self.d_range[0]) | (d > self.d_range[1]) | (photons < self.p_range[0]) \
            | (photons > self.p_range[1])
        flags |= np.where(bad, FLAG_RANGE, 0).astype(np.uint8)
        return {"D": d.astype(np.float32), "D_lo": np.exp(mu - q).astype(np.float32),
                "D_hi": np.exp(mu + q).astype(np.float32), "photons": photons.astype(np.float32), "flags": flags}
