"""Frames of a direct electron detector from the single-event library (the seed's EMSim recipe).

Each frame: a Poisson number of electrons (mean ``rate``) entering at uniform continuous points;
each draws a random library event under a random symmetry of the square (normal incidence makes
the 8 flips/rotations physically equivalent), whose stamp is added at the entry pixel; then
Gaussian read noise (``noise_e`` electrons), gain (``adu_per_e``) and ``offset`` (ADU), rounded and
clipped to uint16 for integer frames.

Coordinates: pixel (row r, col c) is centred on (x=c, y=r) and spans [c-0.5, c+0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .physics import CENTRE, STAMP, EventLibrary


@dataclass
class Frames:
    """Simulated frames with ground truth (one row per electron)."""

    frames: np.ndarray  # (n, H, W) ADU
    adu_per_e: float
    offset: float
    truth_item: np.ndarray  # (e,) frame index
    truth_x: np.ndarray  # (e,) entry x (pixels)
    truth_y: np.ndarray
    truth_charge: np.ndarray  # (e,) total charge of the event (e-, inside the frame)
    truth_track_um: np.ndarray
    truth_backscatter: np.ndarray
    truth_lib: np.ndarray  # library index (events from one library index must not cross splits)
    truth_crb_px: np.ndarray | None = None  # read-noise Cramer-Rao floor of the entry point, pixels

    def truth(self) -> dict[str, np.ndarray]:
        out = {"item": self.truth_item, "x": self.truth_x, "y": self.truth_y, "charge": self.truth_charge,
               "track_um": self.truth_track_um, "backscatter": self.truth_backscatter, "lib": self.truth_lib}
        if self.truth_crb_px is not None:
            out["crb_px"] = self.truth_crb_px
        return out


def _symmetry(stamps: np.ndarray, sub: np.ndarray, sym: np.ndarray):
    """Apply symmetry codes 0..7 (bit0 flip x, bit1 flip y, bit2 transpose) to stamps and offsets."""
    st = stamps.copy()
    sb = sub.copy()
    fx = (sym & 1).astype(bool)
    fy = (sym & 2).astype(bool)
    tr = (sym & 4).astype(bool)
    st[fx] = st[fx][:, :, ::-1]
    sb[fx, 0] = 1.0 - sb[fx, 0]
    st[fy] = st[fy][:, ::-1, :]
    sb[fy, 1] = 1.0 - sb[fy, 1]
    st[tr] = np.swapaxes(st[tr], 1, 2)
    sb[tr] = sb[tr][:, ::-1]
    # 1 - u can be exactly 1.0 when u == 0; keep the entry strictly inside the centre pixel
    np.clip(sb, 0.0, np.nextafter(np.float32(1.0), np.float32(0.0)), out=sb)
    return st, sb


CHUNK = 100_000  # electrons per scatter-add chunk


def simulate_frames(lib: EventLibrary, n_frames: int, height: int = 100, width: int = 100,
                    rate: float = 10.0, noise_e: float = 20.0, adu_per_e: float = 1.0,
                    offset: float = 100.0, dtype: str = "<u2", seed: int = 0,
                    lib_indices: np.ndarray | None = None) -> Frames:
    """Simulate ``n_frames`` frames; ``lib_indices`` restricts the library events used (splits)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rate, n_frames)
    ne = int(counts.sum())
    item = np.repeat(np.arange(n_frames), counts)
    pool = np.arange(len(lib)) if lib_indices is None else np.asarray(lib_indices)
    li = pool[rng.integers(0, len(pool), ne)]
    sym = rng.integers(0, 8, ne)
    # entry pixel uniform over the frame; continuous entry = pixel low edge + sub-pixel offset
    col = rng.integers(0, width, ne)
    row = rng.integers(0, height, ne)
    # scatter-add every stamp pixel that lands inside its frame, in chunks of electrons (a 576x576
    # acquisition has ~3,000 per frame: unchunked index arrays would take tens of GB); one chunk
    # (the same sums as before) up to CHUNK electrons
    k = np.arange(STAMP) - CENTRE
    clean = np.zeros(n_frames * height * width)
    charge = np.empty(ne)
    sub = np.empty((ne, 2), lib.sub.dtype)
    for a in range(0, max(ne, 1), CHUNK):
        b = min(a + CHUNK, ne)
        stamps, sub[a:b] = _symmetry(lib.stamps[li[a:b]], lib.sub[li[a:b]], sym[a:b])
        rr = row[a:b, None, None] + k[None, :, None]
        cc = col[a:b, None, None] + k[None, None, :]
        inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
        flat = (item[a:b, None, None] * height + rr) * width + cc
        clean += np.bincount(flat[inside], weights=stamps[inside], minlength=n_frames * height * width)
        charge[a:b] = np.where(inside, stamps, 0).sum(axis=(1, 2))
    tx = col - 0.5 + sub[:, 0]
    ty = row - 0.5 + sub[:, 1]
    img = clean.reshape(n_frames, height, width)
    img = (img + rng.normal(0.0, noise_e, img.shape)) * adu_per_e + offset
    if np.dtype(dtype).kind == "u":
        img = np.clip(np.rint(img), 0, 65535).astype(dtype)
    else:
        img = img.astype(dtype)
    return Frames(img, adu_per_e, offset, item.astype(np.int64), tx.astype(np.float64), ty.astype(np.float64),
                  charge.astype(np.float32), lib.track_um[li], lib.backscatter[li], li,
                  None if lib.crb_px is None else lib.crb_px[li] * np.float32(noise_e / 20.0))
