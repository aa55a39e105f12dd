"""Per-stack features carrying the seed's three cues, for the tree model.

* trajectory: MSD at lags 1..5 (as apparent D), robust (median) lag-1/2 MSD, CVE terms, trajectory
  extent, the MSD-fit and CVE estimates themselves;
* blob shape: windowed second moments per frame (mean/median over frames, eigenvalues,
  elongation) -- the motion blur within one exposure widens and elongates the spot;
* intensity: ROI photons per frame (mean, spread), 3x3 peak fraction (mean, spread), background,
  and the Mortensen localisation variance these imply.

Positions are converted to nm and MSDs to um^2/s with the header's pixel size and frame period,
so the trees see physical units. Trees are invariant to monotone transforms: no logs needed.
"""

from __future__ import annotations

import numpy as np

from . import estimators as E
from .localize import Spots

FEATURE_NAMES = (
    "photons", "photons_cv", "background", "peak_frac", "peak_frac_sd",
    "m2", "m2_median", "m2_sd", "lam_max", "lam_min", "elong", "m2_wide",
    "msd1", "msd2", "msd3", "msd4", "msd5", "msd1_med", "msd2_med", "step_max",
    "cve_a", "cve_c", "d_cve", "s2_cve", "d_msd", "extent", "loc_var",
)


def positions_nm(sp: Spots, pixel_nm: float) -> np.ndarray:
    """(n,T,2) positions (x, y) in nm from the image corner (pixel centres at (i + 0.5) * pixel)."""
    return np.stack([(sp.x + 0.5) * pixel_nm, (sp.y + 0.5) * pixel_nm], axis=-1).astype(np.float64)


def features(sp: Spots, pixel_nm: float, frame_s: float, exposure_s: float, r: float,
             psf_sigma_nm: float) -> np.ndarray:
    """(n, len(FEATURE_NAMES)) float32 feature matrix."""
    pos = positions_nm(sp, pixel_nm)
    n, t, _ = pos.shape
    px2 = pixel_nm ** 2 / E.UM2  # px^2 -> um^2
    tot = sp.total.astype(np.float64)
    photons = tot.mean(1)
    pf = sp.peak / np.maximum(tot, 1.0)
    m2 = (sp.mxx + sp.myy) * px2
    tr = sp.mxx + sp.myy
    det_term = np.sqrt((sp.mxx - sp.myy) ** 2 + 4 * sp.mxy ** 2)
    lam_max = 0.5 * (tr + det_term) * px2
    lam_min = 0.5 * (tr - det_term) * px2
    elong = det_term / np.maximum(np.abs(tr), 1e-3)
    lags = min(5, t - 1)
    msd = E.msd_curve(pos, lags) / E.UM2  # um^2
    msd_d = msd / (4 * frame_s * np.arange(1, lags + 1))
    if lags < 5:
        msd_d = np.concatenate([msd_d, np.repeat(msd_d[:, -1:], 5 - lags, axis=1)], axis=1)
    sq1 = (E._incr(pos, 1) ** 2).sum(-1) / E.UM2
    sq2 = (E._incr(pos, min(2, t - 1)) ** 2).sum(-1) / E.UM2
    # median of a 2D squared step is ln(2) * its mean for Brownian steps
    msd1_med = np.median(sq1, 1) / np.log(2) / (4 * frame_s)
    msd2_med = np.median(sq2, 1) / np.log(2) / (8 * frame_s)
    a, c = E.cve_terms(pos)
    d_cve, s2 = E.cve(pos, frame_s, r)
    d_msd = E.msd_d(pos, frame_s)
    extent = (pos.max(1) - pos.min(1)).sum(-1) / 1e3  # um
    lv = E.localisation_var(np.maximum(photons, 1.0), np.maximum(sp.background, 0.0), 0.0, exposure_s,
                            pixel_nm, psf_sigma_nm) / E.UM2
    cols = [
        photons, tot.std(1) / np.maximum(photons, 1.0), sp.background, pf.mean(1), pf.std(1),
        m2.mean(1), np.median(m2, 1), m2.std(1), lam_max.mean(1), lam_min.mean(1), elong.mean(1),
        sp.wide.mean(1) * px2,
        *msd_d.T, msd1_med, msd2_med, sq1.max(1) / (4 * frame_s),
        a / E.UM2, c / E.UM2, d_cve, s2 / E.UM2, d_msd, extent, lv,
    ]
    return np.stack(cols, axis=1).astype(np.float32)
