"""Real data in: cut 16-frame stacks around tracked molecules from a movie (trackpy-style tracks).

``cut_stacks(movie, frame, x, y, particle)`` takes a camera movie (F, H, W) and a track table (one
row per localisation: frame index, x = column and y = row in pixels, particle id -- the columns of
a trackpy ``link`` DataFrame) and returns stacks (n, T, size, size) centred on each track's mean
position over T consecutive frames (non-overlapping windows; windows with a missing frame are
skipped; crops near the edge are shifted inside the movie). ``load_movie`` reads a TIFF with
``tifffile`` (optional dependency) or a .npy file; ``load_tracks_csv`` reads a CSV with a header
naming frame, x, y and particle columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def cut_stacks(movie: np.ndarray, frame: np.ndarray, x: np.ndarray, y: np.ndarray, particle: np.ndarray,
               frames: int = 16, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stacks (n,T,size,size) of movie's dtype, particle id (n,), first frame (n,))."""
    movie = np.asarray(movie)
    if movie.ndim != 3:
        raise ValueError(f"movie must be (frames, height, width), got shape {movie.shape}")
    f_all, h, w = movie.shape
    if h < size or w < size:
        raise ValueError(f"movie frames {h}x{w} are smaller than the {size}x{size} crop")
    frame, particle = np.asarray(frame, np.int64), np.asarray(particle, np.int64)
    x, y = np.asarray(x, float), np.asarray(y, float)
    order = np.lexsort((frame, particle))
    frame, particle, x, y = frame[order], particle[order], x[order], y[order]
    # a window starts at a row whose next T-1 rows are the same particle in consecutive frames
    n = len(frame)
    if n < frames:
        return np.zeros((0, frames, size, size), movie.dtype), np.zeros(0, np.int64), np.zeros(0, np.int64)
    idx = np.arange(n - frames + 1)
    last = idx + frames - 1
    ok = (particle[idx] == particle[last]) & (frame[last] - frame[idx] == frames - 1)
    # non-overlapping: keep starts at offsets 0, T, 2T, ... within each particle's run
    run_start = np.r_[0, np.flatnonzero(np.diff(particle)) + 1]
    first_of = run_start[np.searchsorted(run_start, idx, side="right") - 1]
    ok &= (idx - first_of) % frames == 0
    starts = idx[ok]
    rows = starts[:, None] + np.arange(frames)
    cx = np.rint(x[rows].mean(1)).astype(np.int64)
    cy = np.rint(y[rows].mean(1)).astype(np.int64)
    c0 = np.clip(cx - size // 2, 0, w - size)
    r0 = np.clip(cy - size // 2, 0, h - size)
    fr = frame[rows]
    if fr.size and (fr.min() < 0 or fr.max() >= f_all):
        raise ValueError("track frames outside the movie")
    off = np.arange(size)
    stacks = movie[fr[:, :, None, None], (r0[:, None, None, None] + off[:, None]),
                   (c0[:, None, None, None] + off[None, :])]
    return stacks, particle[starts], frame[starts]


def load_movie(path: str | Path) -> np.ndarray:
    """A movie (F, H, W) from a TIFF (needs ``tifffile``) or a .npy file."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return np.load(path)
    try:
        import tifffile
    except ImportError as exc:  # optional dependency
        raise ImportError("reading TIFF movies needs the 'tifffile' package (pip install tifffile)") from exc
    return np.asarray(tifffile.imread(str(path)))


def load_tracks_csv(path: str | Path, columns=("frame", "x", "y", "particle")) -> tuple[np.ndarray, ...]:
    """Columns (frame, x, y, particle) of a CSV with a header row (e.g. a saved trackpy DataFrame)."""
    data = np.genfromtxt(path, delimiter=",", names=True)
    missing = [c for c in columns if c not in data.dtype.names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (have {list(data.dtype.names)})")
    return tuple(np.asarray(data[c]) for c in columns)
