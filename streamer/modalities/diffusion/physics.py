"""Physics of a blurred, noisy 2D Brownian image stack (seed 001): trajectories, images, camera.

Units: positions in nm, times in s, D in um^2/s (1 um^2/s = 1e6 nm^2/s).

Image model (per frame k, pixel p): expected photons
    mu_kp = b + (N / m) * sum_j PSF_p(r_kj)
with m sub-positions r_kj during the exposure (the motion blur), the Gaussian PSF integrated over
the pixel (differences of erf, separable in x and y), b background photons per pixel. The camera
adds Poisson shot noise, Gaussian read noise (sigma_read, photo-electrons) and converts to ADU:
    ADU = baseline + adu_per_photon * (Poisson(mu) + Normal(0, sigma_read)), clipped to uint16.
The frame image is a batched matrix product Ey^T @ Ex over sub-positions (no Python loops).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import erf

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
UM2 = 1e6  # nm^2 per um^2


@dataclass(frozen=True)
class Optics:
    """Acquisition parameters shared by a batch of stacks."""

    frames: int = 16
    height: int = 64
    width: int = 64
    pixel_nm: float = 200.0
    frame_s: float = 0.010
    exposure_s: float | None = None  # None: = frame_s (continuous illumination)
    sub: int = 10  # sub-positions per exposure (the blur)
    fwhm_nm: float = 250.0
    read_sigma: float = 1.6  # photo-electrons rms
    baseline: float = 100.0  # ADU
    adu_per_photon: float = 2.0

    @property
    def exposure(self) -> float:
        return self.frame_s if self.exposure_s is None else self.exposure_s

    @property
    def psf_sigma_nm(self) -> float:
        return self.fwhm_nm * FWHM_TO_SIGMA

    def asdict(self) -> dict:
        return asdict(self)


def sub_times(op: Optics) -> np.ndarray:
    """(T, m) times of the sub-positions: midpoints of m equal slices of each exposure."""
    k = np.arange(op.frames)[:, None] * op.frame_s
    j = (np.arange(op.sub)[None, :] + 0.5) * (op.exposure / op.sub)
    return k + j


def brownian_paths(rng: np.random.Generator, d_um2: np.ndarray, op: Optics) -> np.ndarray:
    """(n, T, m, 2) positions in nm of Brownian paths sampled at :func:`sub_times`, start at 0."""
    t = sub_times(op).reshape(-1)
    dt = np.diff(t, prepend=t[0])  # first increment 0: the path starts at its first sample
    n = len(d_um2)
    steps = rng.standard_normal((n, t.size, 2)) * np.sqrt(2.0 * d_um2 * UM2)[:, None, None] * np.sqrt(dt)[None, :, None]
    return np.cumsum(steps, axis=1).reshape(n, op.frames, op.sub, 2)


def path_msd_d(paths: np.ndarray, op: Optics) -> np.ndarray:
    """The path's own D (um^2/s): sum of squared increments / (4 * elapsed time), the MLE of D from
    the full sampled path (what the seed calls the trajectory's effective D)."""
    flat = paths.reshape(len(paths), -1, 2)
    t = sub_times(op).reshape(-1)
    return (np.diff(flat, axis=1) ** 2).sum(axis=(1, 2)) / (4.0 * (t[-1] - t[0])) / UM2


def pixel_profiles(coord_nm: np.ndarray, n_pix: int, pixel_nm: float, sigma_nm: float) -> np.ndarray:
    """Fraction of a 1D Gaussian centred at ``coord_nm`` (any shape) falling in each pixel: (..., n_pix)."""
    edges = np.arange(n_pix + 1, dtype=np.float64) * pixel_nm
    z = (edges - coord_nm[..., None]) / (np.sqrt(2.0) * sigma_nm)
    c = erf(z)
    return 0.5 * (c[..., 1:] - c[..., :-1])


def expected_images(paths_nm: np.ndarray, photons: np.ndarray, background: np.ndarray, op: Optics,
                    fwhm_nm: np.ndarray | None = None) -> np.ndarray:
    """(n, T, H, W) float32 expected photons per pixel. ``paths_nm`` are absolute positions
    (x, y) in nm from the image corner; ``photons`` (n,) expected signal photons per frame,
    ``background`` (n,) photons per pixel per frame; ``fwhm_nm`` (n,) per-stack PSF FWHM
    (default: the optics' one)."""
    s = op.psf_sigma_nm if fwhm_nm is None else (np.asarray(fwhm_nm, float) * FWHM_TO_SIGMA)[:, None, None, None]
    ex = pixel_profiles(paths_nm[..., 0], op.width, op.pixel_nm, s).astype(np.float32)   # (n,T,m,W)
    ey = pixel_profiles(paths_nm[..., 1], op.height, op.pixel_nm, s).astype(np.float32)  # (n,T,m,H)
    img = np.matmul(np.swapaxes(ey, -1, -2), ex)  # (n,T,H,W): sum over sub-positions
    scale = (photons / op.sub).astype(np.float32)[:, None, None, None]
    return img * scale + background.astype(np.float32)[:, None, None, None]


def camera(rng: np.random.Generator, mu: np.ndarray, op: Optics) -> np.ndarray:
    """Poisson shot noise + Gaussian read noise, converted to uint16 ADU."""
    e = rng.poisson(mu).astype(np.float32)
    e += rng.standard_normal(mu.shape, dtype=np.float32) * np.float32(op.read_sigma)
    adu = np.rint(op.baseline + op.adu_per_photon * e)
    return np.clip(adu, 0, 65535).astype(np.uint16)


@dataclass
class Batch:
    """Simulated stacks and their ground truth."""

    stacks: np.ndarray  # (n,T,H,W) uint16 ADU
    d: np.ndarray  # (n,) diffusion coefficient, um^2/s (the parameter)
    d_path: np.ndarray  # (n,) the path's own MSD-D, um^2/s
    photons: np.ndarray  # (n,) expected signal photons per frame
    background: np.ndarray  # (n,) background photons per pixel per frame
    positions: np.ndarray  # (n,T,2) true blur-averaged positions (x, y), nm from the corner


def simulate(rng: np.random.Generator, d_um2: np.ndarray, photons: np.ndarray, background: np.ndarray,
             op: Optics, chunk: int = 512, centre_jitter_px: float = 4.0, fwhm_nm: np.ndarray | None = None) -> Batch:
    """Simulate one stack per entry of ``d_um2``/``photons``/``background`` (chunked for memory).
    ``fwhm_nm``: optional per-stack PSF FWHM (e.g. to train a model tolerant to PSF calibration).

    Each path is shifted so its mean position sits within ``centre_jitter_px`` of the image centre
    (a tracker's cutter centres the molecule; keeps fast molecules in view)."""
    d_um2, photons, background = (np.asarray(a, np.float64) for a in (d_um2, photons, background))
    n = len(d_um2)
    stacks = np.empty((n, op.frames, op.height, op.width), np.uint16)
    d_path = np.empty(n)
    pos = np.empty((n, op.frames, 2))
    centre = np.array([op.width, op.height]) * op.pixel_nm / 2.0
    for a in range(0, n, chunk):
        sl = slice(a, min(a + chunk, n))
        p = brownian_paths(rng, d_um2[sl], op)
        d_path[sl] = path_msd_d(p, op)
        shift = centre + rng.uniform(-1, 1, (len(p), 2)) * centre_jitter_px * op.pixel_nm
        p = p - p.mean(axis=(1, 2), keepdims=True) + shift[:, None, None, :]
        pos[sl] = p.mean(axis=2)
        fw = None if fwhm_nm is None else np.asarray(fwhm_nm, float)[sl]
        stacks[sl] = camera(rng, expected_images(p, photons[sl], background[sl], op, fw), op)
    return Batch(stacks, d_um2, d_path, photons, background, pos)


def draw_conditions(rng: np.random.Generator, n: int, d_range=(0.01, 10.0), photon_range=(100.0, 5000.0),
                    background_range=(0.5, 4.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log-uniform D, photons per frame and background photons per pixel."""
    def lu(lo_hi):
        lo, hi = np.log(lo_hi[0]), np.log(lo_hi[1])
        return np.exp(rng.uniform(lo, hi, n))
    return lu(d_range), lu(photon_range), lu(background_range)


def blur_r(op: Optics) -> float:
    """Motion-blur coefficient R (Vestergaard et al. 2014) of the discrete sub-position average.

    Per axis, for blur-averaged positions X_k: Var(X_{k+1} - X_k) = 2 D dt (1 - 2R) (no noise).
    Continuous illumination over the whole period gives R = 1/6; m sub-positions or a shorter
    exposure give less. Computed exactly from the Brownian covariance 2D min(s, t)."""
    t = sub_times(op)[:2]  # frames 0 and 1
    w = np.concatenate([-np.ones(op.sub), np.ones(op.sub)]) / op.sub
    tt = t.reshape(-1)
    cov = np.minimum(tt[:, None], tt[None, :])  # per 2D: covariance / (2D)
    var = w @ cov @ w  # Var / (2D)
    return 0.5 * (1.0 - var / op.frame_s)


#: the evaluation grid (``streamer evaluate --modality diffusion``): decades of D x photon levels
GRID_DECADES = ((0.01, 0.1), (0.1, 1.0), (1.0, 10.0))
GRID_PHOTONS = (200.0, 1000.0, 5000.0)
GRID_BACKGROUND = (0.5, 4.0)


def draw_grid(rng: np.random.Generator, per_cell: int, decades=GRID_DECADES, photon_levels=GRID_PHOTONS,
              background_range=GRID_BACKGROUND) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(D, photons, background) of the evaluation grid: per (decade, photon level) cell ``per_cell``
    stacks, D log-uniform within the decade, background log-uniform."""
    d = np.concatenate([np.exp(rng.uniform(np.log(lo), np.log(hi), per_cell)) for lo, hi in decades
                        for _ in photon_levels])
    p = np.concatenate([np.full(per_cell, ph) for _ in decades for ph in photon_levels])
    b = np.exp(rng.uniform(*np.log(background_range), len(d)))
    return d, p, b
