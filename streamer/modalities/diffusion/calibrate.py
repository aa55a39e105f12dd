"""Instrument calibration from immobilized beads: PSF width, camera gain and read noise, localisation noise.

Input: stacks (n, T, H, W) of immobile beads (a replay file from ``streamer cut``/``simulate --d 0``,
or a TIFF/.npy of shape (T, H, W) or (n, T, H, W)). Nothing moves, so per bead
* the time-mean image is the PSF (integrated over pixels) plus background: a least-squares fit of
  a pixel-integrated Gaussian gives sigma, hence FWHM = 2.3548 sigma;
* each pixel's temporal variance against its mean is the photon-transfer curve
  ``var = g (mean - baseline) + g^2 s_read^2`` (ADU): a robust line fit gives the gain ``g`` (ADU per
  photon) and, with the baseline known (dark frames or the header), the read noise;
* per-frame positions scatter by the localisation noise (reported, not a profile value).
Pixel size and frame period cannot come from beads: they come from the file's header or options.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.special import erf

from .physics import FWHM_TO_SIGMA


@dataclass
class BeadFit:
    fwhm_nm: float
    fwhm_sd_nm: float  # spread over beads
    gain: float
    read_sigma: float
    loc_noise_nm: float
    beads: int
    residual_rms: float  # PSF fit residual / peak, median over beads


def _gauss_pixels(params, yy, xx):
    """Pixel-integrated isotropic Gaussian: amplitude (photons), x0, y0, sigma (px), background."""
    a, x0, y0, s, b = params
    k = 1.0 / (np.sqrt(2.0) * max(s, 1e-3))
    ex = 0.5 * (erf((xx + 0.5 - x0) * k) - erf((xx - 0.5 - x0) * k))
    ey = 0.5 * (erf((yy + 0.5 - y0) * k) - erf((yy - 0.5 - y0) * k))
    return a * ex * ey + b


def fit_psf(mean_img: np.ndarray) -> tuple[float, float]:
    """(sigma in px, relative residual rms) of one bead's time-mean image (background-subtracted ADU)."""
    h, w = mean_img.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    b0 = float(np.median(np.concatenate([mean_img[0], mean_img[-1], mean_img[:, 0], mean_img[:, -1]])))
    img = mean_img - b0
    r0, c0 = np.unravel_index(np.argmax(img), img.shape)
    start = [max(img.sum(), 1.0), c0, r0, 1.0, 0.0]
    fit = least_squares(lambda p: (_gauss_pixels(p, yy, xx) - img).ravel(), start,
                        bounds=([0, 0, 0, 0.2, -np.inf], [np.inf, w - 1, h - 1, max(h, w) / 2, np.inf]))
    peak = max(float(img.max()), 1e-9)
    return float(fit.x[3]), float(np.sqrt(np.mean(fit.fun ** 2)) / peak)


def photon_transfer(stacks: np.ndarray, baseline: float) -> tuple[float, float]:
    """(gain ADU/photon, read noise e-) from per-pixel temporal mean/variance of immobile beads."""
    s = stacks.astype(np.float64)
    m = s.mean(1).ravel()
    v = s.var(1, ddof=1).ravel()
    # bins evenly spaced in mean, the mean variance per bin (unbiased, unlike a median of sample
    # variances), weight ~ 1/variance with the pixel count capped: a pixel binned by its own noisy
    # mean biases its bin's variance at a few photons, and the ~10^6 background pixels would
    # otherwise decide the slope that the bead pixels measure
    edges = np.linspace(m.min(), np.quantile(m, 0.9995), 41)
    idx = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, 39)
    cnt = np.bincount(idx, minlength=40)
    keep = cnt >= 20
    mb = (np.bincount(idx, m, 40)[keep] / cnt[keep])
    vb = (np.bincount(idx, v, 40)[keep] / cnt[keep])
    w = np.sqrt(np.minimum(cnt[keep], 200)) / np.maximum(vb, 1e-9)
    g, c = np.polyfit(mb - baseline, vb, 1, w=w)
    read = np.sqrt(max(c, 0.0)) / g if g > 0 else float("nan")
    return float(g), float(read)


def calibrate_beads(stacks: np.ndarray, pixel_nm: float, baseline: float) -> BeadFit:
    """Fit the instrument from bead stacks (n, T, H, W) in ADU."""
    from .localize import measure

    if stacks.ndim == 3:
        stacks = stacks[None]
    if stacks.ndim != 4 or stacks.shape[1] < 3:
        raise ValueError(f"bead data must be (T, H, W) or (n, T, H, W) with T >= 3, got {stacks.shape}")
    gain, read = photon_transfer(stacks, baseline)
    sig, res = zip(*(fit_psf(st.mean(0).astype(np.float64)) for st in stacks))
    sig = np.asarray(sig) * pixel_nm
    sp = measure(stacks, baseline, gain if gain > 0 else 1.0)
    pos = np.stack([sp.x, sp.y], -1) * pixel_nm  # (n, T, 2)
    loc = float(np.median(np.sqrt(np.mean(pos.var(1, ddof=1), -1))))
    fwhm = sig / FWHM_TO_SIGMA
    return BeadFit(float(np.median(fwhm)), float(np.std(fwhm)), gain, read, loc, len(stacks), float(np.median(res)))
