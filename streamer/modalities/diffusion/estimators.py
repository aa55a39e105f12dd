"""Track-based estimators of D and the Cramer-Rao bound, vectorized over stacks.

Input: per-frame positions (n, T, 2) in nm, frame period ``dt`` (s). Output D in um^2/s.

* :func:`msd_d` -- "trajectory-D" (seed 001, section 1.2): mean squared displacement at lags
  1..L, least-squares line MSD = 4 D t + c, D = slope / 4. The offset absorbs the localisation
  error; motion blur is not modelled.
* :func:`cve` -- the covariance-based estimator of Vestergaard, Blainey & Flyvbjerg, PRE 89,
  022726 (2014), eqs. (14)-(15), with motion-blur coefficient R and localisation variance:
  D = <dx^2>/(2 dt) + <dx_n dx_n+1>/dt,  sigma^2 = R <dx^2> + (2R - 1) <dx_n dx_n+1>
  and its variance (their eq. 16), used for the baseline's plug-in interval.
* :func:`crb_d` -- Cramer-Rao bound for D from a blurred, noisy track: the increments of each axis
  are Gaussian with the tridiagonal covariance (Vestergaard eq. 7; Berglund, PRE 82, 011917, 2010)
  Sigma_ii = 2 D dt (1 - 2R) + 2 sigma^2,  Sigma_i,i+1 = 2 R D dt - sigma^2,
  Fisher information I_ab = 1/2 tr(S^-1 dS_a S^-1 dS_b) over (D, sigma^2), two independent axes.
* :func:`localisation_var` -- per-axis localisation variance for the CRB: Mortensen et al., Nat.
  Methods 7, 377 (2010), MLE form, with the PSF widened by the motion blur (D t_E / 3 per axis).
"""

from __future__ import annotations

import numpy as np

UM2 = 1e6
D_FLOOR = 1e-4  # um^2/s: estimates at or below zero are reported as this


def _incr(pos: np.ndarray, lag: int) -> np.ndarray:
    return pos[:, lag:, :] - pos[:, :-lag, :]


def msd_curve(pos_nm: np.ndarray, lags: int) -> np.ndarray:
    """(n, lags) 2D MSD in nm^2 at lags 1..lags (averaged over all pairs)."""
    return np.stack([(_incr(pos_nm, L) ** 2).sum(-1).mean(-1) for L in range(1, lags + 1)], axis=1)


def msd_d(pos_nm: np.ndarray, dt: float, lags: int = 4) -> np.ndarray:
    """Trajectory-D (um^2/s): slope/4 of a least-squares line through MSD at lags 1..lags."""
    lags = min(lags, pos_nm.shape[1] - 1)
    msd = msd_curve(pos_nm, lags)
    t = np.arange(1, lags + 1) * dt
    if lags == 1:
        return msd[:, 0] / (4 * dt) / UM2
    tc = t - t.mean()
    slope = (msd - msd.mean(1, keepdims=True)) @ tc / (tc @ tc)
    return slope / 4.0 / UM2


def cve_terms(pos_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per stack <dx^2> and <dx_n dx_n+1> (nm^2), averaged over both axes."""
    d = _incr(pos_nm, 1)
    a = (d ** 2).mean(axis=(1, 2))
    if d.shape[1] < 2:
        return a, np.zeros_like(a)
    c = (d[:, 1:, :] * d[:, :-1, :]).mean(axis=(1, 2))
    return a, c


def cve(pos_nm: np.ndarray, dt: float, r: float) -> tuple[np.ndarray, np.ndarray]:
    """CVE: (D um^2/s, sigma^2 nm^2 per axis)."""
    a, c = cve_terms(pos_nm)
    d = (a / (2 * dt) + c / dt) / UM2
    s2 = r * a + (2 * r - 1) * c
    return d, s2


def cve_var(d_um2: np.ndarray, s2_nm2: np.ndarray, dt: float, r: float, n_steps: int, dims: int = 2) -> np.ndarray:
    """Variance of the CVE (Vestergaard 2014 eq. 16) for N = n_steps increments per axis, ``dims`` axes."""
    d = np.maximum(d_um2, D_FLOOR) * UM2
    eps = s2_nm2 / (d * dt) - 2 * r
    n = float(n_steps)
    v = d ** 2 * ((6 + 4 * eps + 2 * eps ** 2) / n + 4 * (1 + eps) ** 2 / n ** 2)
    return v / dims / UM2 ** 2


def localisation_var(photons: np.ndarray, background: np.ndarray, d_um2: np.ndarray, exposure_s: float,
                     pixel_nm: float, psf_sigma_nm: float, read_sigma: float = 0.0) -> np.ndarray:
    """Per-axis localisation variance (nm^2) of a blurred spot, Mortensen 2010 (MLE, F = 1)."""
    s2 = psf_sigma_nm ** 2 + pixel_nm ** 2 / 12.0 + np.asarray(d_um2) * UM2 * exposure_s / 3.0
    b = np.asarray(background) + read_sigma ** 2
    n = np.maximum(np.asarray(photons, np.float64), 1.0)
    tau = 2 * np.pi * s2 * b / (n * pixel_nm ** 2)
    return s2 / n * (1 + 4 * tau + np.sqrt(2 * tau / (1 + 4 * tau)))


def crb_d(d_um2: np.ndarray, s2_nm2: np.ndarray, dt: float, r: float, n_frames: int, dims: int = 2) -> np.ndarray:
    """Cramer-Rao bound on Var(D_hat) (um^2/s)^2 for D from a blurred, noisy track of n_frames
    positions per axis (sigma^2 a nuisance parameter)."""
    d = np.asarray(d_um2, np.float64) * UM2
    s2 = np.broadcast_to(np.asarray(s2_nm2, np.float64), d.shape)
    m = n_frames - 1
    eye = np.eye(m)
    off = np.eye(m, k=1) + np.eye(m, k=-1)
    sig = (2 * d * dt * (1 - 2 * r) + 2 * s2)[:, None, None] * eye + (2 * r * d * dt - s2)[:, None, None] * off
    d_d = dt * (2 * (1 - 2 * r) * eye + 2 * r * off)
    d_s = 2 * eye - off
    inv = np.linalg.inv(sig)
    a = inv @ d_d
    b = inv @ d_s
    i_dd = 0.5 * np.einsum("nij,nji->n", a, a)
    i_ds = 0.5 * np.einsum("nij,nji->n", a, b)
    i_ss = 0.5 * np.einsum("nij,nji->n", b, b)
    det = i_dd * i_ss - i_ds ** 2
    return (i_ss / det) / dims / UM2 ** 2
