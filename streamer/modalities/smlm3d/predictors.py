"""Worker-side predictors: ``mle`` (physics baseline) and ``trees`` / ``trees-csr`` (compiled bundles).

Both return the declared per-detection columns (item, x, y, z, photons, background, intervals,
score, flags) and the per-frame ``count`` of kept (not rejected) localizations.
"""

from __future__ import annotations

import numpy as np

from .localize import REJECTED, Localizations, localize
from .model import Bundle, StreamDensity, apply
from .psf import DEFAULT_PSF, AstigmaticPSF

Z90 = 1.6448536269514722  # two-sided 90 % normal quantile (MLE intervals from the CRLB)
DET_COLUMNS = ("item", "x", "y", "z", "photons", "background", "x_lo", "x_hi", "y_lo", "y_hi",
               "z_lo", "z_hi", "score", "flags")


def _columns(n: int, item, xyz, photons, background, half, score, flags) -> dict[str, np.ndarray]:
    f32 = np.float32
    out = {"item": item.astype(np.int32), "x": xyz[:, 0].astype(f32), "y": xyz[:, 1].astype(f32),
           "z": xyz[:, 2].astype(f32), "photons": photons.astype(f32), "background": background.astype(f32)}
    for k, c in enumerate("xyz"):
        out[f"{c}_lo"] = (xyz[:, k] - half[:, k]).astype(f32)
        out[f"{c}_hi"] = (xyz[:, k] + half[:, k]).astype(f32)
    out["score"] = score.astype(f32)
    out["flags"] = flags.astype(np.uint8)
    kept = (out["flags"] & REJECTED) == 0
    out["count"] = np.bincount(out["item"][kept], minlength=n).astype(np.int32)
    return out


def _frames(packet):
    h = packet.header
    return packet.arrays["frames"], float(h.get("pixel_nm", 100.0)), float(h.get("baseline", 100.0)), \
        float(h.get("adu_per_photon", 1.0))


def _mle_coverage():
    """The physics baseline fits with the stream's own curve, pixel size, baseline and gain, so it
    covers every possible value of them; not an EMCCD's excess noise (its CRLB intervals would be
    ~sqrt(2) too narrow)."""
    from ...core.profile import NOMINAL, Coverage
    from .instrument import PROFILE

    ranges = {p.name: (p.lo, p.hi) for p in PROFILE}
    ranges["emccd"] = (0.0, 0.0)
    return Coverage("smlm3d", ranges, NOMINAL, "")


class MLEPredictor:
    """DoG detection + batched Poisson MLE; intervals = estimate +- 1.645 CRLB(estimate).

    ``passes=2`` (ablation ``mle2``): plus the residual re-detection / neighbour-subtracted refit
    the trees path uses, without trees.
    """

    def __init__(self, n_iter: int = 20, passes: int = 1, psf: AstigmaticPSF = DEFAULT_PSF) -> None:
        self.n_iter = n_iter
        self.passes = passes
        self.psf = psf  # the curve of packets without an instrument profile
        self.model_id = "smlm3d-mle-v1" if passes == 1 else f"smlm3d-mle-{passes}pass-v1"
        self.coverage = _mle_coverage()

    def localize(self, frames, pixel_nm=100.0, baseline=100.0, adu=1.0, psf: AstigmaticPSF | None = None) -> Localizations:
        return localize(frames, pixel_nm, baseline, adu, n_iter=self.n_iter, psf=psf or self.psf, passes=self.passes)

    def predict_frames(self, frames, pixel_nm=100.0, baseline=100.0, adu=1.0,
                       psf: AstigmaticPSF | None = None) -> dict[str, np.ndarray]:
        L = self.localize(frames, pixel_nm, baseline, adu, psf)
        return _columns(len(frames), L.item, L.xyz, L.photons, L.background, Z90 * L.sd, L.snr, L.flags)

    def predict(self, packet) -> dict[str, np.ndarray]:
        # a physics baseline adapts to the user's calibration without retraining: fit with the
        # curve of the stream's instrument profile (handed over by the worker) when there is one
        prof = packet.extra.get("profile") if packet.extra else None
        psf = None
        if prof is not None and getattr(prof, "modality", None) == "smlm3d":
            from .instrument import psf_of

            psf = psf_of(prof)
        return self.predict_frames(*_frames(packet), psf=psf)


class TreesPredictor:
    """The MLE's candidates and fits, corrected and scored by a compiled tree bundle + conformal intervals."""

    def __init__(self, bundle: str = "trees-structure", kind: str = "auto") -> None:
        from pathlib import Path

        from .instrument import coverage

        path = Path(bundle)
        if path.is_dir() and (path / "manifest.json").is_file():  # a bundle directory (trained for a profile)
            self.bundle = Bundle.load(path.name, kind=kind, root=path.parent)
        else:  # a shipped bundle's name under compiled_models/smlm3d
            self.bundle = Bundle.load(bundle, kind=kind)
        man = self.bundle.manifest
        self.n_iter = int(man.get("fit_iterations", 20))
        self.passes = int(man.get("passes", 1))
        #: the curve the bundle was trained with (the fit must use the same one its features saw)
        self.psf = AstigmaticPSF(**man["psf"]) if man.get("psf") else DEFAULT_PSF
        #: the instruments this bundle answers for (issue 14; the worker flags packets outside it)
        self.coverage = coverage(man)
        self.model_id = f"smlm3d-{path.name}-{self.bundle.reg.name}"
        #: each stream's recent localizations per frame (the sparse-acquisition cut of short packets)
        self.density = StreamDensity()

    def predict_frames(self, frames, pixel_nm=100.0, baseline=100.0, adu=1.0, stream: str | None = None
                       ) -> dict[str, np.ndarray]:
        """Localizations of ``frames``; ``stream``: judge the sparse-acquisition cut with that stream's
        recent frames too (the worker path); None: with this call's frames alone."""
        L = localize(frames, pixel_nm, baseline, adu, n_iter=self.n_iter, psf=self.psf, passes=self.passes)
        r = apply(L, pixel_nm, self.bundle, self.psf, n_frames=len(frames),
                  density=None if stream is None else self.density, stream=stream or "")
        return _columns(len(frames), L.item, r["xyz"], r["photons"], L.background, r["half"], r["score"],
                        r["flags"])

    def predict(self, packet) -> dict[str, np.ndarray]:
        return self.predict_frames(*_frames(packet), stream=packet.stream)
