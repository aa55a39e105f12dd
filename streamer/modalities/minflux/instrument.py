"""The MINFLUX instrument: its profile parameters, what each model bundle covers, and the training
space of a bundle trained for one profile (imports stay light: the sink loads this with the modality).

Parameters (nominal = the simulator's defaults): ``v0`` (single-emitter visibility of the line
minimum, 1 = a perfect zero), ``background`` (counts per exposure), ``half_l`` (L/2 of the pattern,
nm; per packet as the header ``half_l`` and per tuple from the beam positions) and ``wavelength_nm``
(period of the standing wave; the simulator and every model assume 640 nm, so another wavelength is
flagged by every bundle and cannot be trained for yet).

Coverage (:func:`coverage`) is what a bundle was trained over:

* ``static`` / ``dynamic``: one instrument (v0 = 1, b ~ U(0.5, 2), L/2 = 15 nm). Measured with the
  static model on static rulers (3,000 rulers x 20 tuples per setting): v0 = 0.995 already biases a
  distance class by 7.6 nm (coverage 48 %), so v0 is covered only within 0.001 of its training
  value; L/2 = 14 or 16 nm keeps |bias| <= 0.7 nm and coverage 88-92 %, 13/17 nm 1.2 nm / 86 %, so
  L/2 is covered within +-1 nm; background within the trained U(0.5, 2);
* ``general`` and bundles trained for a profile: the drawn ranges minus the margins the training
  space adds around the range it is meant to serve (:data:`MARGINS`): the trees are least accurate
  at the edges of what they saw.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ...core.profile import ProfileParam

#: the instrument (``streamer profile new --modality minflux``); nominal = the simulator's defaults
PROFILE = (
    ProfileParam("v0", "", 1.0, 0.05, 1.0, tol=0.0, atol=0.001,
                 doc="single-emitter visibility of the intensity minimum (1: perfect zero)"),
    ProfileParam("background", "counts/exposure", 1.0, 0.0, 1000.0, tol=0.5,
                 doc="background counts per exposure"),
    ProfileParam("half_l", "nm", 15.0, 1.0, 500.0, header="half_l", tol=1.0 / 15.0,
                 doc="half the pattern size L/2 (also from each tuple's beam positions)"),
    ProfileParam("wavelength_nm", "nm", 640.0, 300.0, 1200.0, tol=0.002,
                 doc="excitation wavelength (the models assume 640 nm)"),
)

#: the simulator's and every model's wavelength: features and the forward model use it as a constant
MODEL_WAVELENGTH_NM = 640.0
WAVELENGTH_TOL = 0.002
#: static/dynamic bundles: v0 and L/2 covered this close to their training value (measured, module doc)
V0_ATOL, HALF_L_ATOL_NM = 0.001, 1.0
#: training space = covered range + these margins (v0: absolute, background: factor, L/2: nm)
MARGINS = {"v0": 0.02, "background": 1.25, "half_l": 1.0}
#: a bundle trained for one profile covers v0 +- 0.03, background x/÷ 1.3, L/2 +- 2 nm around it
PROFILE_WIDTH = {"v0": 0.03, "background": 1.3, "half_l": 2.0}


def _wavelength() -> tuple[float, float]:
    return (MODEL_WAVELENGTH_NM * (1 - WAVELENGTH_TOL), MODEL_WAVELENGTH_NM * (1 + WAVELENGTH_TOL))


def inner_ranges(space: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Covered ranges of a general-type training space (its drawn ranges minus :data:`MARGINS`);
    v0 = 1 is a physical bound, so its upper end is kept when the space reaches it."""
    v0_lo, v0_hi = space["v0_range"]
    b_lo, b_hi = space["background_range"]
    h_lo, h_hi = space["half_l_range_nm"]
    m = MARGINS
    return {"v0": (v0_lo + m["v0"], v0_hi if v0_hi >= 1.0 else v0_hi - m["v0"]),
            "background": (b_lo * m["background"], b_hi / m["background"]),
            "half_l": (h_lo + m["half_l"], h_hi - m["half_l"]), "wavelength_nm": _wavelength()}


def space_ranges(profile) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
    """(covered ranges, training ranges) of a bundle trained for ``profile``."""
    w, m = PROFILE_WIDTH, MARGINS
    v0, b, h = profile["v0"], profile["background"], profile["half_l"]
    cover = {"v0": (max(v0 - w["v0"], 0.05), min(v0 + w["v0"], 1.0)),
             "background": (b / w["background"], b * w["background"]),
             "half_l": (max(h - w["half_l"], 1.0), h + w["half_l"]), "wavelength_nm": _wavelength()}
    train = {"v0": (max(cover["v0"][0] - m["v0"], 0.03), min(cover["v0"][1] + m["v0"], 1.0)),
             "background": (cover["background"][0] / m["background"], cover["background"][1] * m["background"]),
             "half_l": (max(cover["half_l"][0] - m["half_l"], 0.5), cover["half_l"][1] + m["half_l"])}
    if cover["background"][0] < 0.05:  # a (nearly) background-free instrument: log draws need a floor
        cover["background"] = (0.0, max(cover["background"][1], 0.2))
        train["background"] = (0.02, cover["background"][1] * m["background"])
    return cover, train


def coverage(manifest: dict):
    """What a MINFLUX bundle covers (see the module doc): its recorded instrument entry, the general
    model's training space without its margins, or the static/dynamic simulator's instrument."""
    from ...core.profile import Coverage

    if manifest.get("instrument"):
        return Coverage.from_manifest("minflux", manifest["instrument"])
    if manifest.get("regime") == "general" or "space" in manifest.get("data", {}):
        ranges = inner_ranges(manifest["data"]["space"])
        return Coverage("minflux", ranges, "general (trained before profiles)", "")
    inst = manifest["data"]["simulator"]["instrument"]
    v0, jit = float(inst["v0"]), float(inst.get("v0_jitter", 0.0))
    h = float(inst["half_l_nm"])
    ranges = {"v0": (v0 - jit - V0_ATOL, min(v0 + jit + V0_ATOL, 1.0)),
              "background": tuple(map(float, inst["background_range"])),
              "half_l": (h - HALF_L_ATOL_NM, h + HALF_L_ATOL_NM), "wavelength_nm": _wavelength()}
    return Coverage("minflux", ranges, f"{manifest['regime']} (nominal instrument)", "")


def half_l_outside(cov, positions: np.ndarray) -> np.ndarray | None:
    """(n,) bool: tuples whose beam positions' L/2 lies outside ``cov`` (None when all are inside).
    Vectorised: two subtractions per tuple."""
    if cov is None or "half_l" not in cov.ranges:
        return None
    lo, hi = cov.ranges["half_l"]
    p = positions
    hl = (p[:, 0, 2] - p[:, 0, 0] + p[:, 1, 2] - p[:, 1, 0]) * np.float32(0.25)
    bad = (hl < np.float32(lo) - np.float32(0.01)) | (hl > np.float32(hi) + np.float32(0.01))
    return bad if bad.any() else None


#: reason counted for tuples flagged by what the stream itself shows (beam positions, live calibration)
MEASURED = "instrument-mismatch-measured"


def mark_rows(packet, out: dict, rows: np.ndarray, flag: int, reason: str = MEASURED) -> int:
    """Flag ``rows`` (bool (n,)) of a result as outside the model's coverage: mismatch flag, every
    interval NaN, counted under ``reason`` in the packet's invalid reasons. Returns the count."""
    rows = np.asarray(rows, bool)
    k = int(rows.sum())
    if not k:
        return 0
    for name in ("lower", "upper", "trace_lower", "trace_upper"):
        if name in out:
            a = np.array(out[name], np.float32)
            a[rows] = np.nan
            out[name] = a
    f = np.array(out["flags"], np.uint8)
    f[rows] |= np.uint8(flag)
    out["flags"] = f
    packet.invalid_reasons[reason] = packet.invalid_reasons.get(reason, 0) + k
    return k
