"""``streamer calibrate --modality smlm3d BEADS.tif``: the astigmatic calibration curve from a bead z-stack.

Steps (Huang et al., Science 2008; the calibration step of SMAP / ThunderSTORM / DECODE):

1. beads: local maxima of the stack's mean image (DoG), isolated ones away from the edges;
2. per bead and frame: Poisson maximum-likelihood fit of a pixel-integrated elliptical Gaussian
   (x, y, sigma_x, sigma_y, photons, background) on a window around the bead (batched LM);
3. per frame: the median over beads of sigma_x and sigma_y (robust to a bad bead);
4. the astigmatic model sigma_{x,y}(z) = s0 sqrt(1 + u^2 + A u^3 + B u^4), u = (z - z0 -+ c) / d, fitted
   to both curves at once (weighted least squares, scipy); z0 is where the stack's z axis puts the
   midpoint between the foci (the profile's z = 0), reported;
5. residuals (nm, per frame) and a plot (PNG, when matplotlib is there).

Also :func:`simulate_beads`: a bead z-stack of an instrument profile (tests, the bench,
``streamer simulate --modality smlm3d --beads``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .psf import Z_RANGE_NM, AstigmaticPSF, integrated_1d

WINDOW = 15  # fit window (pixels): the widest bead image at 100 nm pixels has sigma ~3 px


# --------------------------------------------------------------------------- simulation


def simulate_beads(psf: AstigmaticPSF, camera, pixel_nm: float = 100.0, n_beads: int = 6, z_step_nm: float = 20.0,
                   z_range: tuple[float, float] = (-800.0, 800.0), photons: float = 20000.0, background: float = 20.0,
                   size: int = 64, z_offset_nm: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bead z-stack (n_z, size, size) uint16 ADU and the stage z of each frame (nm).

    Beads sit at fixed random positions (>= 12 px apart, >= 10 px from the edges); frame k images
    them with the stage at ``z_range[0] + k * z_step_nm``, so a bead's axial position relative to the
    foci' midpoint is stage z - ``z_offset_nm``.
    """
    from .simulate import camera_frames, render

    rng = np.random.default_rng(seed)
    z = np.arange(z_range[0], z_range[1] + 1e-9, z_step_nm)
    pos: list[np.ndarray] = []
    while len(pos) < n_beads:
        p = rng.uniform(10, size - 10, 2)
        if all(np.hypot(*(p - q)) >= 12 for q in pos):
            pos.append(p)
    xy = np.array(pos) * pixel_nm
    n = len(z)
    truth = {"item": np.repeat(np.arange(n, dtype=np.int32), n_beads), "x": np.tile(xy[:, 0], n),
             "y": np.tile(xy[:, 1], n), "z": np.repeat(z - z_offset_nm, n_beads),
             "photons": np.full(n * n_beads, float(photons))}
    mu = render(truth, n, size, size, pixel_nm, np.full(n, float(background)), psf)
    return camera_frames(mu, camera, rng), z


# --------------------------------------------------------------------------- per-frame Gaussian fits


def find_beads(photons: np.ndarray, window: int = WINDOW, threshold: float = 10.0) -> np.ndarray:
    """(k, 2) integer (row, col) of isolated beads: DoG maxima of the stack's mean image."""
    from scipy import ndimage

    img = photons.mean(0)
    dog = ndimage.gaussian_filter(img, 1.5) - ndimage.gaussian_filter(img, 4.0)
    noise = 1.4826 * np.median(np.abs(dog - np.median(dog)))
    peaks = (dog == ndimage.maximum_filter(dog, size=5)) & (dog > threshold * max(noise, 1e-6))
    rows, cols = np.nonzero(peaks)
    h = window // 2
    H, W = img.shape
    inside = (rows >= h) & (rows < H - h) & (cols >= h) & (cols < W - h)
    rows, cols = rows[inside], cols[inside]
    keep = []
    for i in range(len(rows)):  # another bead inside the window would bias its widths
        d = np.hypot(rows - rows[i], cols - cols[i])
        if (d[(d > 0)] > window * 0.8).all():
            keep.append(i)
    return np.column_stack([rows[keep], cols[keep]]).astype(int)


def _gauss(theta: np.ndarray, R: int, jac: bool = False):
    """Pixel-integrated elliptical Gaussian on R x R windows: theta (M, 6) = x, y, sx, sy (pixels), N, b."""
    x, y, sx, sy, N, b = (theta[:, k] for k in range(6))
    if not jac:
        Ex, Ey = integrated_1d(x, sx, R), integrated_1d(y, sy, R)
        return b[:, None, None] + N[:, None, None] * Ey[:, :, None] * Ex[:, None, :]
    Ex, dEx, dSx = integrated_1d(x, sx, R, True)
    Ey, dEy, dSy = integrated_1d(y, sy, R, True)
    Nb = N[:, None, None]
    img = Ey[:, :, None] * Ex[:, None, :]
    J = np.empty(img.shape + (6,))
    J[..., 0] = Nb * Ey[:, :, None] * dEx[:, None, :]
    J[..., 1] = Nb * dEy[:, :, None] * Ex[:, None, :]
    J[..., 2] = Nb * Ey[:, :, None] * dSx[:, None, :]
    J[..., 3] = Nb * dSy[:, :, None] * Ex[:, None, :]
    J[..., 4] = img
    J[..., 5] = 1.0
    return b[:, None, None] + Nb * img, J


def fit_gaussians(rois: np.ndarray, n_iter: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Batched Poisson LM fit of elliptical Gaussians: (theta (M, 6), converged (M,))."""
    d = np.maximum(np.asarray(rois, np.float64), 0.0)
    M, R, _ = d.shape
    b0 = np.maximum(np.percentile(d.reshape(M, -1), 20, axis=1), 0.5)
    s = np.maximum(d - b0[:, None, None], 0)
    tot = np.maximum(s.sum((1, 2)), 1.0)
    idx = np.arange(R) + 0.5
    x0 = (s.sum(1) * idx).sum(1) / tot
    y0 = (s.sum(2) * idx).sum(1) / tot
    sx0 = np.sqrt(np.maximum((s.sum(1) * (idx - x0[:, None]) ** 2).sum(1) / tot, 0.5))
    sy0 = np.sqrt(np.maximum((s.sum(2) * (idx - y0[:, None]) ** 2).sum(1) / tot, 0.5))
    theta = np.column_stack([x0, y0, np.clip(sx0, 0.5, R / 3), np.clip(sy0, 0.5, R / 3), tot, b0])
    lam = np.full(M, 1e-2)

    def nll(mu):
        return (mu - d * np.log(np.maximum(mu, 1e-9))).sum((1, 2))

    mu, J = _gauss(theta, R, True)
    cur = nll(mu)
    conv = np.zeros(M, bool)
    for _ in range(n_iter):
        w = (d / np.maximum(mu, 1e-9) - 1.0).reshape(M, -1)
        Jf = J.reshape(M, -1, 6)
        g = np.einsum("mk,mki->mi", w, Jf)
        H = np.einsum("mki,mk,mkj->mij", Jf, (d / np.maximum(mu, 1e-9) ** 2).reshape(M, -1), Jf)
        Hd = H + lam[:, None, None] * np.eye(6) * np.maximum(np.diagonal(H, axis1=1, axis2=2), 1e-9)[:, None, :]
        step = np.linalg.solve(Hd + 1e-12 * np.eye(6), g[..., None])[..., 0]
        trial = theta + step
        trial[:, 2:4] = np.clip(trial[:, 2:4], 0.3, R)
        trial[:, 4] = np.maximum(trial[:, 4], 1.0)
        trial[:, 5] = np.maximum(trial[:, 5], 1e-3)
        mu_t, J_t = _gauss(trial, R, True)
        new = nll(mu_t)
        better = new < cur
        conv |= better & (np.abs(step[:, :4]).max(1) < 1e-4)
        theta[better], mu[better], J[better], cur[better] = trial[better], mu_t[better], J_t[better], new[better]
        lam = np.where(better, lam * 0.3, lam * 10.0)
    return theta, conv


# --------------------------------------------------------------------------- the astigmatic model


def _huang(p: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s0, c, d, A, B, z0 = p
    out = []
    for sign in (-1.0, 1.0):
        u = (z - z0 + sign * c) / d
        out.append(s0 * np.sqrt(np.maximum(1 + u * u + A * u ** 3 + B * u ** 4, 1e-6)))
    return out[0], out[1]


@dataclass
class BeadCalibration:
    psf: AstigmaticPSF
    z0_nm: float                 # stage z of the foci' midpoint (the profile's z = 0)
    z: np.ndarray                # stage z per frame (nm)
    sigma_x: np.ndarray          # median over beads per frame (nm)
    sigma_y: np.ndarray
    beads: int
    residual_rms_nm: float       # of the per-frame medians about the fitted curve
    residual_max_nm: float
    used: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # frames in the model fit

    def lines(self) -> list[str]:
        p = self.psf
        return [f"{self.beads} beads, {int(self.used.sum())} of {len(self.z)} frames in the fit "
                f"(z {self.z[0]:.0f} .. {self.z[-1]:.0f} nm stage)",
                f"curve: s0 {p.s0:.1f} nm, c {p.c:.1f} nm, d {p.d:.1f} nm, A {p.A:.3f}, B {p.B:.3f}; "
                f"foci midpoint at stage z {self.z0_nm:.1f} nm (profile z = 0)",
                f"residuals of the per-frame sigmas: rms {self.residual_rms_nm:.2f} nm, max {self.residual_max_nm:.2f} nm"]


def calibrate_beads(frames: np.ndarray, z_nm: np.ndarray, pixel_nm: float, baseline: float = 100.0,
                    adu_per_photon: float = 1.0, window: int = WINDOW) -> BeadCalibration:
    """Fit the astigmatic curve to a bead z-stack (frames (n_z, H, W) ADU at stage positions ``z_nm``)."""
    from scipy.optimize import least_squares

    frames = np.asarray(frames)
    z_nm = np.asarray(z_nm, np.float64)
    if frames.ndim != 3 or len(frames) != len(z_nm):
        raise ValueError(f"expected a z-stack (n_z, H, W) with one z per frame, got {frames.shape} and {len(z_nm)} z")
    if len(frames) < 8:
        raise ValueError(f"a z-stack of {len(frames)} frames is too short to fit the 6-parameter curve (>= 8)")
    photons = (frames.astype(np.float64) - baseline) / adu_per_photon
    beads = find_beads(photons, window)
    if len(beads) == 0:
        raise ValueError("no isolated beads found in the stack (beads must be >= 12 px apart and 8 px from the edges)")
    h = window // 2
    n, k = len(frames), len(beads)
    rois = np.stack([photons[:, r - h:r + h + 1, c - h:c + h + 1] for r, c in beads], 1).reshape(n * k, window, window)
    theta, conv = fit_gaussians(rois)
    sx = theta[:, 2].reshape(n, k) * pixel_nm
    sy = theta[:, 3].reshape(n, k) * pixel_nm
    ok = conv.reshape(n, k) & (theta[:, 4].reshape(n, k) > 0)
    sxm = np.array([np.median(sx[i, ok[i]]) if ok[i].any() else np.nan for i in range(n)])
    sym = np.array([np.median(sy[i, ok[i]]) if ok[i].any() else np.nan for i in range(n)])
    # a bead far out of focus is wider than the window can hold: leave those frames out
    used = np.isfinite(sxm) & np.isfinite(sym) & (np.maximum(sxm, sym) < window * pixel_nm / 5)
    zu = z_nm[used]
    i0 = int(np.argmin(np.abs(sxm[used] - sym[used])))  # the foci' midpoint: equal widths
    p0 = np.array([np.nanmin(np.minimum(sxm, sym)), 0.25 * (zu[-1] - zu[0]) / 3, 0.35 * (zu[-1] - zu[0]),
                   0.0, 0.0, zu[i0]])

    def resid(p):
        a, b = _huang(p, zu)
        return np.concatenate([(a - sxm[used]) / sxm[used], (b - sym[used]) / sym[used]])

    # the sign of c is a convention (x focus above the midpoint): try both starting sides
    best = None
    for sign in (1.0, -1.0):
        start = p0.copy()
        start[1] *= sign
        r = least_squares(resid, start, bounds=([1.0, -5000, 10.0, -5, -5, -5000], [5000, 5000, 1e4, 5, 5, 5000]))
        if best is None or r.cost < best.cost:
            best = r
    s0, c, d, A, B, z0 = best.x
    if c < 0:  # the other convention: swap which axis focuses first is not what the simulator models
        raise ValueError("the fitted x focus lies below the y focus (c < 0): the camera axes are swapped "
                         "relative to the convention (x focus at z = +c); transpose the stack")
    psf = AstigmaticPSF(s0=float(s0), c=float(c), d=float(d), A=float(A), B=float(B))
    a, b = _huang(best.x, zu)
    res = np.concatenate([a - sxm[used], b - sym[used]])
    return BeadCalibration(psf, float(z0), z_nm, sxm, sym, k, float(np.sqrt(np.mean(res ** 2))),
                           float(np.abs(res).max()), used)


def curve_error(fitted: AstigmaticPSF, true: AstigmaticPSF, z_range: tuple[float, float] = Z_RANGE_NM) -> float:
    """Largest relative difference of sigma_x, sigma_y between two curves over ``z_range``."""
    z = np.linspace(*z_range, 301)
    fx, fy, _, _ = fitted.sigmas(z)
    tx, ty, _, _ = true.sigmas(z)
    return float(max(np.abs(fx / tx - 1).max(), np.abs(fy / ty - 1).max()))


def plot(cal: BeadCalibration, path: str | Path) -> Path | None:
    """sigma_x, sigma_y per frame and the fitted curve (PNG); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    z = np.linspace(cal.z[0], cal.z[-1], 400)
    fx, fy, _, _ = cal.psf.sigmas(z - cal.z0_nm)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(cal.z[cal.used], cal.sigma_x[cal.used], ".", color="tab:blue", label="sigma_x (beads, median)")
    ax.plot(cal.z[cal.used], cal.sigma_y[cal.used], ".", color="tab:red", label="sigma_y (beads, median)")
    ax.plot(z, fx, "-", color="tab:blue", lw=1, label="fit")
    ax.plot(z, fy, "-", color="tab:red", lw=1)
    ax.axvline(cal.z0_nm, color="grey", lw=0.5)
    ax.set_xlabel("stage z (nm)")
    ax.set_ylabel("sigma (nm)")
    ax.set_title(f"astigmatic calibration: residual rms {cal.residual_rms_nm:.2f} nm")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
