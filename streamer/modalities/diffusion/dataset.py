"""Simulated feature datasets (chunked: stacks are never all in memory at once)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import features
from .localize import measure
from .physics import GRID_DECADES, GRID_PHOTONS, Optics, blur_r, draw_conditions, draw_grid, simulate

#: training ranges: a little wider than the evaluated 0.01-10 um^2/s and 100-5,000 photons so the
#: trees do not shrink toward the middle at the ends of the evaluated range
TRAIN_D = (0.005, 20.0)
TRAIN_PHOTONS = (80.0, 6000.0)
BACKGROUND = (0.5, 4.0)
#: PSF FWHM drawn per training stack: the trees read the motion blur from the spot's width, so an
#: exactly known PSF would make them fragile to a calibration error of a few percent
TRAIN_FWHM = (235.0, 265.0)


@dataclass
class Dataset:
    X: np.ndarray  # (n, F) float32
    d: np.ndarray  # true D parameter, um^2/s
    d_path: np.ndarray  # the path's own MSD-D
    photons: np.ndarray  # true expected photons per frame
    background: np.ndarray
    d_msd: np.ndarray  # trajectory-D baseline
    d_cve: np.ndarray  # CVE baseline
    s2_cve: np.ndarray  # CVE localisation variance (nm^2)
    photons_hat: np.ndarray  # measured photons per frame


def stack_features(stacks: np.ndarray, op: Optics, baseline: float, adu: float) -> tuple[np.ndarray, object]:
    sp = measure(stacks, baseline, adu)
    return features(sp, op.pixel_nm, op.frame_s, op.exposure, blur_r(op), op.psf_sigma_nm), sp


def make(rng: np.random.Generator, d: np.ndarray, photons: np.ndarray, background: np.ndarray,
         op: Optics, chunk: int = 1024, fwhm_nm: np.ndarray | None = None, progress: str | bool = False) -> Dataset:
    """Simulate stacks for the given conditions and keep only features, baselines and truth
    (``progress``: a tqdm bar with this label)."""
    from tqdm import tqdm

    from .features import FEATURE_NAMES

    cols = {k: [] for k in ("X", "d_path")}
    starts = range(0, len(d), chunk)
    for a in (tqdm(starts, desc=str(progress), unit=f"x{chunk} stacks") if progress else starts):
        sl = slice(a, a + chunk)
        b = simulate(rng, d[sl], photons[sl], background[sl], op,
                     fwhm_nm=None if fwhm_nm is None else fwhm_nm[sl])
        X, _ = stack_features(b.stacks, op, op.baseline, op.adu_per_photon)
        cols["X"].append(X)
        cols["d_path"].append(b.d_path)
    X = np.concatenate(cols["X"])
    f = {k: i for i, k in enumerate(FEATURE_NAMES)}
    return Dataset(X, np.asarray(d, float), np.concatenate(cols["d_path"]), np.asarray(photons, float),
                   np.asarray(background, float), X[:, f["d_msd"]].astype(float), X[:, f["d_cve"]].astype(float),
                   X[:, f["s2_cve"]].astype(float) * 1e6, X[:, f["photons"]].astype(float))


def make_random(seed: int, n: int, op: Optics, d_range=TRAIN_D, photon_range=TRAIN_PHOTONS,
                background_range=BACKGROUND, fwhm_range=TRAIN_FWHM, progress: str | bool = False) -> Dataset:
    """Random conditions; cached under $STREAMER_DIFFUSION_CACHE (if set) by all the arguments."""
    import dataclasses
    import hashlib
    import os
    from pathlib import Path

    from .features import FEATURE_NAMES

    cache = os.environ.get("STREAMER_DIFFUSION_CACHE")
    key = hashlib.sha1(repr((seed, n, op.asdict(), d_range, photon_range, background_range, fwhm_range,
                             FEATURE_NAMES)).encode()).hexdigest()[:16]
    path = Path(cache) / f"ds-{key}.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            return Dataset(**{f.name: z[f.name] for f in dataclasses.fields(Dataset)})
    rng = np.random.default_rng(seed)
    d, p, b = draw_conditions(rng, n, d_range, photon_range, background_range)
    fw = None if fwhm_range is None else rng.uniform(*fwhm_range, n)
    ds = make(rng, d, p, b, op, fwhm_nm=fw, progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **dataclasses.asdict(ds))
    return ds


def make_grid(seed: int, per_cell: int, op: Optics, decades=GRID_DECADES, photon_levels=GRID_PHOTONS,
              background_range=BACKGROUND) -> Dataset:
    """The evaluation grid: D log-uniform within each decade x fixed photon levels."""
    rng = np.random.default_rng(seed)
    d, p, b = draw_grid(rng, per_cell, decades, photon_levels, background_range)
    return make(rng, d, p, b, op)
