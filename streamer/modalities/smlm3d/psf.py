"""Astigmatic Gaussian PSF (Huang et al., Science 2008 calibration curve), pixel-integrated.

sigma_x(z) = s0 sqrt(1 + u^2 + A u^3 + B u^4), u = (z - c)/d, and sigma_y the same with u = (z + c)/d:
a cylindrical lens puts the x focus at z = +c and the y focus at z = -c, so the ellipticity encodes z.

The expected photon count in pixel (i, j) (i = row / y, j = column / x; pixel j spans [j, j+1) in
pixel units) of an emitter at (x, y, z) with N photons on background b photons/pixel is

    mu_ij = b + N * Ey_i * Ex_j,  Ex_j = 1/2 [erf((j+1-x)/(sqrt2 sx)) - erf((j-x)/(sqrt2 sx))]

(the Gaussian integrated over each pixel: exact for a Gaussian PSF, no sampling bias). Everything is
vectorized over emitters; derivatives are analytic so the MLE and the CRLB share one Jacobian.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erf

SQRT2 = np.sqrt(2.0)
SQRT2PI = np.sqrt(2.0 * np.pi)
Z_RANGE_NM = (-750.0, 750.0)  # SMLM Challenge 2016 axial range


@dataclass(frozen=True)
class AstigmaticPSF:
    """Calibration curve parameters (nm). Defaults: a typical 1.49 NA astigmatic set-up."""

    s0: float = 110.0   # in-focus Gaussian sigma
    c: float = 250.0    # half focal separation of x and y
    d: float = 500.0    # focal depth
    A: float = 0.05     # cubic and quartic corrections (Huang 2008)
    B: float = 0.02

    def sigmas(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(sigma_x, sigma_y, dsigma_x/dz, dsigma_y/dz) in nm for axial positions ``z`` (nm)."""
        z = np.asarray(z, np.float64)
        out = []
        for sign in (-1.0, 1.0):
            u = (z + sign * self.c) / self.d
            q = 1.0 + u * u + self.A * u ** 3 + self.B * u ** 4
            q = np.maximum(q, 1e-6)
            s = self.s0 * np.sqrt(q)
            ds = self.s0 * (2 * u + 3 * self.A * u * u + 4 * self.B * u ** 3) / (2 * np.sqrt(q) * self.d)
            out.append((s, ds))
        (sx, dsx), (sy, dsy) = out
        return sx, sy, dsx, dsy

    def to_dict(self) -> dict:
        return {"s0": self.s0, "c": self.c, "d": self.d, "A": self.A, "B": self.B}


DEFAULT_PSF = AstigmaticPSF()


def integrated_1d(center: np.ndarray, sigma: np.ndarray, n_px: int, derivs: bool = False):
    """Pixel-integrated 1D Gaussian: (M, n_px) fractions for pixels 0..n_px-1 (pixel units).

    With ``derivs``: also d/dcenter and d/dsigma, each (M, n_px).
    """
    center = np.asarray(center, np.float64)[:, None]
    sigma = np.asarray(sigma, np.float64)[:, None]
    edges = np.arange(n_px + 1, dtype=np.float64)[None, :] - center  # (M, n_px+1)
    t = edges / (SQRT2 * sigma)
    cdf = 0.5 * erf(t)
    E = cdf[:, 1:] - cdf[:, :-1]
    if not derivs:
        return E
    g = np.exp(-t * t) / (SQRT2PI * sigma)  # Gaussian density at the edges
    dE_dc = g[:, :-1] - g[:, 1:]
    ge = g * edges / sigma
    dE_ds = ge[:, :-1] - ge[:, 1:]
    return E, dE_dc, dE_ds


def model(theta: np.ndarray, n_px: int, psf: AstigmaticPSF, pixel_nm: float, jac: bool = False):
    """Expected photons of single emitters on square (n_px x n_px) windows.

    ``theta`` (M, 5): x, y (pixel units in the window), z (nm), N (photons), b (photons/pixel).
    Returns mu (M, n, n) and, with ``jac``, the Jacobian (M, n, n, 5).
    """
    x, y, z, N, b = (theta[:, k] for k in range(5))
    sx, sy, dsx, dsy = psf.sigmas(z)
    sx, sy, dsx, dsy = sx / pixel_nm, sy / pixel_nm, dsx / pixel_nm, dsy / pixel_nm
    if not jac:
        Ex = integrated_1d(x, sx, n_px)
        Ey = integrated_1d(y, sy, n_px)
        return b[:, None, None] + N[:, None, None] * Ey[:, :, None] * Ex[:, None, :]
    Ex, dEx_dc, dEx_ds = integrated_1d(x, sx, n_px, True)
    Ey, dEy_dc, dEy_ds = integrated_1d(y, sy, n_px, True)
    Nb = N[:, None, None]
    psf_img = Ey[:, :, None] * Ex[:, None, :]
    mu = b[:, None, None] + Nb * psf_img
    J = np.empty(mu.shape + (5,))
    J[..., 0] = Nb * Ey[:, :, None] * dEx_dc[:, None, :]
    J[..., 1] = Nb * dEy_dc[:, :, None] * Ex[:, None, :]
    J[..., 2] = Nb * (Ey[:, :, None] * (dEx_ds * dsx[:, None])[:, None, :]
                      + (dEy_ds * dsy[:, None])[:, :, None] * Ex[:, None, :])
    J[..., 3] = psf_img
    J[..., 4] = 1.0
    return mu, J


def fisher(mu: np.ndarray, J: np.ndarray, read_var: float = 0.0) -> np.ndarray:
    """Poisson Fisher information (M, P, P) = sum_k J_k J_k^T / (mu_k + read_var), P = J.shape[-1]
    (5 for one emitter, 9 for a pair).

    Read noise enters as the usual sCMOS approximation data + var ~ Poisson(mu + var).
    """
    M, K = len(mu), int(np.prod(mu.shape[1:]))
    Jf = J.reshape(M, K, J.shape[-1])
    w = 1.0 / (mu.reshape(M, K) + read_var)
    return np.einsum("mki,mk,mkj->mij", Jf, w, Jf, optimize=True)


def crlb(theta: np.ndarray, psf: AstigmaticPSF = DEFAULT_PSF, pixel_nm: float = 100.0,
         n_px: int = 17, read_var: float = 0.0) -> np.ndarray:
    """Cramer-Rao lower bound (M, 5) standard deviations of x, y (nm), z (nm), N, b.

    ``theta``: x, y, z, N, b with x, y in pixel units of any frame; the bound is evaluated for the
    emitter alone on an ``n_px`` window centred on its pixel (the floor any window method has).
    """
    theta = np.asarray(theta, np.float64).copy()
    half = n_px // 2
    theta[:, 0] = theta[:, 0] - np.floor(theta[:, 0]) + half
    theta[:, 1] = theta[:, 1] - np.floor(theta[:, 1]) + half
    mu, J = model(theta, n_px, psf, pixel_nm, jac=True)
    F = fisher(mu, J, read_var)
    cov = np.linalg.inv(F + np.eye(5) * 1e-12)
    sd = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0))
    sd[:, :2] *= pixel_nm
    return sd
