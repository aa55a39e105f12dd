"""Per-frame spot finding and localisation in image stacks, vectorized over stacks and frames.

Pipeline (all numpy, no per-frame Python loops):
1. ADU -> photons with the header's baseline and gain;
2. background b per stack: mean of a 2-pixel frame border over all frames (the molecule is centred
   by the tracker's cutter, so the border holds background only);
3. detection: argmax of the 5x5 box-filtered frame;
4. an ROI (default 11x11) around it; positions by the iterated Gaussian-mask estimator (Thompson
   et al. 2002), which reaches Gaussian-fit (MLE-like) precision at a fraction of the cost;
5. blob shape: Gaussian-windowed second moments around that position; intensity: ROI total and
   3x3 peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROI = 11
BORDER = 2


def to_photons(stacks: np.ndarray, baseline: float, adu_per_photon: float) -> np.ndarray:
    """float32 photo-electrons (n,T,H,W) from ADU."""
    x = stacks.astype(np.float32)
    x -= np.float32(baseline)
    x *= np.float32(1.0 / adu_per_photon)
    return x


def border_background(x: np.ndarray, border: int = BORDER) -> np.ndarray:
    """(n,) mean value per pixel of the frame border over all frames (same units as ``x``)."""
    n = len(x)
    top = x[:, :, :border, :].reshape(n, -1)
    bot = x[:, :, -border:, :].reshape(n, -1)
    left = x[:, :, border:-border, :border].reshape(n, -1)
    right = x[:, :, border:-border, -border:].reshape(n, -1)
    s = sum(a.sum(1, dtype=np.float64) for a in (top, bot, left, right))
    cnt = top.shape[1] + bot.shape[1] + left.shape[1] + right.shape[1]
    return s / cnt


def _box(x: np.ndarray, k: int, axis: int) -> np.ndarray:
    """'valid' running sum of width k along axis (sum of k shifted views)."""
    n = x.shape[axis]
    out = np.take(x, np.arange(0, n - k + 1), axis=axis).astype(np.float32)
    for i in range(1, k):
        out += np.take(x, np.arange(i, n - k + 1 + i), axis=axis)
    return out


def detect(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column (n,T) of the brightest 6x6 pixel region per frame (its centre, rounded).

    Frames are binned 2x2 first (one pass over the raw uint16 data), then box-filtered 3x3 on the
    small binned frame: the cost is one read of the stack, which matters at 2,000 stacks/s."""
    n, t, h, w = raw.shape
    h2, w2 = h // 2, w // 2
    x = raw[:, :, : 2 * h2, : 2 * w2].astype(np.float32)
    cols = x[..., 0::2] + x[..., 1::2]  # strided adds: far faster than sum over reshaped axes
    binned = cols[..., 0::2, :] + cols[..., 1::2, :]
    s = _box(_box(binned, 3, 2), 3, 3)  # (n,t,h2-2,w2-2): bins i..i+2 -> pixels 2i..2i+5
    flat = s.reshape(n, t, -1).argmax(axis=2)
    ww = w2 - 2
    return 2 * (flat // ww) + 3, 2 * (flat % ww) + 3


@dataclass
class Spots:
    """Per-frame measurements of one molecule in each stack (positions in pixels)."""

    x: np.ndarray  # (n,T) column, pixels (pixel centres at integers)
    y: np.ndarray  # (n,T) row, pixels
    total: np.ndarray  # (n,T) background-subtracted photons in the ROI
    peak: np.ndarray  # (n,T) background-subtracted photons in the brightest 3x3 of the ROI
    mxx: np.ndarray  # (n,T) windowed second moments, px^2
    myy: np.ndarray
    mxy: np.ndarray
    wide: np.ndarray  # (n,T) mxx + myy in a wider (2.5 px) window, px^2
    background: np.ndarray  # (n,) photons per pixel


def rois(x: np.ndarray, r: np.ndarray, c: np.ndarray, size: int = ROI) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n,T,size,size) crops centred on (r, c), shifted to stay inside the frame; their origins."""
    n, t, h, w = x.shape
    half = size // 2
    r0 = np.clip(r - half, 0, h - size)
    c0 = np.clip(c - half, 0, w - size)
    off = np.arange(size)
    rows = r0[..., None, None] + off[:, None]
    cols = c0[..., None, None] + off[None, :]
    flat = x.reshape(n * t, h * w)
    idx = (rows * w + cols).reshape(n * t, size * size)
    crop = np.take_along_axis(flat, idx, axis=1).reshape(n, t, size, size)
    return crop, r0, c0


def gaussian_mask(crop: np.ndarray, sigma_px, iters: int = 6, start=None) -> tuple[np.ndarray, np.ndarray]:
    """Iterated Gaussian-mask centroid of background-subtracted crops (n,T,s,s): (x, y) in crop px.
    ``sigma_px``: scalar or per-stack (n,) mask width."""
    s = crop.shape[-1]
    u = np.arange(s, dtype=np.float32)
    if start is None:
        xc = np.full(crop.shape[:2], (s - 1) / 2, np.float32)
        yc = xc.copy()
    else:
        xc, yc = (np.asarray(a, np.float32) for a in start)
    sig = np.asarray(sigma_px, np.float32)
    inv = (-0.5 / sig ** 2)[..., None, None] if sig.ndim else np.float32(-0.5 / sig ** 2)
    for _ in range(iters):
        wx = np.exp(inv * (u - xc[..., None]) ** 2)  # (n,T,s)
        wy = np.exp(inv * (u - yc[..., None]) ** 2)
        iy = np.einsum("ntyx,ntx->nty", crop, wx)  # weighted over x, per row
        ix = np.einsum("ntyx,nty->ntx", crop, wy)
        sw = (iy * wy).sum(-1)
        ok = sw > 1e-3
        nx = (ix * wx * u).sum(-1) / np.where(ok, sw, 1)
        ny = (iy * wy * u).sum(-1) / np.where(ok, sw, 1)
        xc = np.where(ok, np.clip(nx, 0, s - 1), xc)
        yc = np.where(ok, np.clip(ny, 0, s - 1), yc)
    return xc, yc


def moments(crop: np.ndarray, xc: np.ndarray, yc: np.ndarray, window_px: float):
    """Gaussian-windowed second moments (mxx, myy, mxy) in px^2 around (xc, yc)."""
    u = np.arange(crop.shape[-1], dtype=np.float32)
    sw = np.float32(-0.5 / window_px ** 2)
    dx = u - xc[..., None]
    dy = u - yc[..., None]
    wi = crop * np.exp(sw * dy ** 2)[..., :, None] * np.exp(sw * dx ** 2)[..., None, :]
    s0 = wi.sum((-1, -2))
    s0 = np.where(np.abs(s0) > 1e-3, s0, np.float32(1e-3))
    mxx = (wi.sum(-2) * dx ** 2).sum(-1) / s0
    myy = (wi.sum(-1) * dy ** 2).sum(-1) / s0
    mxy = np.einsum("ntyx,nty,ntx->nt", wi, dy, dx) / s0
    return mxx, myy, mxy


def measure(stacks: np.ndarray, baseline: float, adu_per_photon: float, size: int = ROI) -> Spots:
    """Localise the molecule in every frame of every stack and measure its shape and intensity."""
    r, c = detect(stacks)
    crop, r0, c0 = rois(stacks, r, c, size)
    crop = to_photons(crop, baseline, adu_per_photon)
    b = (border_background(stacks).astype(np.float32) - np.float32(baseline)) / np.float32(adu_per_photon)
    crop -= b[:, None, None, None]
    # pass 1: mask ~ the PSF; pass 2: mask ~ 2x the measured blob size per stack, which keeps the
    # estimate close to the photon-weighted mean position of a motion-blurred spot (a narrow mask
    # follows the brightest part of the blur) while staying precise for slow molecules
    xc, yc = gaussian_mask(crop, 1.0)
    m1 = moments(crop, xc, yc, 1.6)
    size_px = np.sqrt(np.clip(np.median(0.5 * (m1[0] + m1[1]), axis=1), 0.1, None))
    xc, yc = gaussian_mask(crop, np.clip(2.0 * size_px, 1.0, 3.0), iters=3, start=(xc, yc))
    mxx, myy, mxy = moments(crop, xc, yc, 1.6)
    wx, wy, _ = moments(crop, xc, yc, 2.5)
    total = crop.sum((-1, -2))
    box3 = _box(_box(crop, 3, 2), 3, 3)
    peak = box3.reshape(*box3.shape[:2], -1).max(-1)
    return Spots(xc + c0, yc + r0, total, peak, mxx, myy, mxy, wx + wy, b)
