"""ThunderSTORM CSV: export localizations for ImageJ/ThunderSTORM, SMAP, the SMLM Challenge tools,
and read such tables back (e.g. ground truth or another package's localizations for comparison).

ThunderSTORM columns: ``"id","frame","x [nm]","y [nm]","z [nm]","sigma1 [nm]",...,"intensity [photon]",
"offset [photon]","bkgstd [photon]","uncertainty [nm]"``; frames are 1-based. Only the columns we
have are written; reading maps any known header (quoted or not) to our names.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .localize import REJECTED

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
