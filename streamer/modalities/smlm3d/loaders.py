"""Real data in and out: camera stacks (TIFF via ``tifffile``, or ``.npy``) to replay, and ThunderSTORM
CSV: export localizations for ImageJ/ThunderSTORM, SMAP, the SMLM Challenge tools, and read such tables
back (e.g. ground truth or another package's localizations for comparison).

ThunderSTORM columns: ``"id","frame","x [nm]","y [nm]","z [nm]","sigma1 [nm]",...,"intensity [photon]",
"offset [photon]","bkgstd [photon]","uncertainty [nm]"``; frames are 1-based. Only the columns we
have are written; reading maps any known header (quoted or not) to our names.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .detect import ROI
from .localize import REJECTED

def load_stack(path: str | Path) -> np.ndarray:
    """A camera stack (frames, height, width) as uint16 ADU, from a (multi-page) TIFF or a ``.npy``.

    A single 2D image is one frame. Integer data must lie in 0..65535 and float data must hold whole
    numbers there (what a camera writes); anything else is refused with a message rather than
    silently rounded or wrapped, since the fit's noise model is in ADU counts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        a = np.asarray(tifffile.imread(str(path)))
    elif suffix == ".npy":
        a = np.load(path, allow_pickle=False)
    else:
        raise ValueError(f"{path}: expected a .tif/.tiff or .npy camera stack")
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or min(a.shape) < 1:
        raise ValueError(f"{path}: expected frames (n, height, width), got shape {a.shape}")
    if a.shape[1] < ROI or a.shape[2] < ROI:
        raise ValueError(f"{path}: frames of {a.shape[1]}x{a.shape[2]} pixels are smaller than one fit window "
                         f"({ROI}x{ROI})")
    if a.dtype == np.uint16:
        return a
    if a.dtype.kind not in "uif":
        raise ValueError(f"{path}: pixel type {a.dtype} is not camera counts")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValueError(f"{path}: NaN or infinite pixels")
        if not np.array_equal(a, np.round(a)):
            raise ValueError(f"{path}: float pixels that are not whole ADU counts (give the raw camera stack)")
    lo, hi = a.min(), a.max()
    if lo < 0 or hi > 65535:
        raise ValueError(f"{path}: pixel values {lo}..{hi} lie outside the 16-bit camera range 0..65535")
    return a.astype(np.uint16)


def truth_from_csv(path: str | Path, n_frames: int) -> dict[str, np.ndarray]:
    """Ground truth for a converted stack from a ThunderSTORM-style CSV (e.g. the SMLM Challenge's
    ``activations.csv`` exported with these headers): ``item``, ``x``, ``y``, ``z`` (0 if absent),
    ``photons`` and per-frame ``background`` (NaN if absent: no CRLB is reported then)."""
    t = read_thunderstorm_csv(path)
    item = t["item"]
    if len(item) and (item.min() < 0 or item.max() >= n_frames):
        raise ValueError(f"{path}: frames {item.min() + 1}..{item.max() + 1} lie outside the stack's 1..{n_frames}")
    m = len(item)
    return {"item": item.astype(np.int64), "x": t["x"], "y": t["y"], "z": t.get("z", np.zeros(m)),
            "photons": t.get("photons", np.full(m, np.nan)), "background": np.full(n_frames, np.nan)}


#: our column -> ThunderSTORM header
COLUMNS = {"frame": "frame", "x": "x [nm]", "y": "y [nm]", "z": "z [nm]", "photons": "intensity [photon]",
           "background": "offset [photon]", "uncertainty": "uncertainty [nm]"}


def write_thunderstorm_csv(path: str | Path, loc: dict[str, np.ndarray], frame_offset: int = 0,
                           keep_rejected: bool = False) -> int:
    """Write localizations (``item`` = frame index within the recording, x/y/z nm, photons, background,
    optional intervals -> uncertainty = half the mean lateral 90 % width / 1.645). Returns rows written."""
    loc = {k: np.asarray(v) for k, v in loc.items()}
    keep = np.ones(len(loc["x"]), bool)
    if "flags" in loc and not keep_rejected:
        keep = (loc["flags"] & REJECTED) == 0
    frame = loc["item"][keep].astype(np.int64) + 1 + frame_offset
    cols = {"frame": frame}
    for k in ("x", "y", "z", "photons", "background"):
        if k in loc:
            cols[k] = loc[k][keep]
    if "x_lo" in loc:
        cols["uncertainty"] = 0.25 * ((loc["x_hi"] - loc["x_lo"]) + (loc["y_hi"] - loc["y_lo"]))[keep] / 1.645
    order = np.argsort(frame, kind="stable")
    names = list(cols)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC)
        w.writerow(["id"] + [COLUMNS[n] for n in names])
        for i, r in enumerate(order):
            w.writerow([i + 1] + [int(cols[n][r]) if n == "frame" else float(cols[n][r]) for n in names])
    return len(order)


def read_thunderstorm_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Columns we know, as arrays: ``item`` (0-based frame), x, y, z, photons, background, uncertainty."""
    inv = {v.lower(): k for k, v in COLUMNS.items()}
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{path}: empty file")
    header = [h.strip().strip('"').lower() for h in rows[0]]
    data = np.array(rows[1:], dtype=np.float64).reshape(len(rows) - 1, len(header))
    out = {}
    for j, h in enumerate(header):
        if h in inv:
            out[inv[h]] = data[:, j]
    if "frame" not in out or "x" not in out or "y" not in out:
        raise ValueError(f"{path}: needs at least frame, x [nm], y [nm] columns; found {header}")
    out["item"] = out.pop("frame").astype(np.int64) - 1
    return out
