"""Per-tuple feature vectors for the trained distance models (vectorized, float32).

Two feature groups, selectable by name so the ablation can compare them:

* ``published``: the 15 features of the published XGBoost baseline (6 photon ratios n_k/N,
  6 beam positions, 2 modulation depths (n- + n+ - 2 n0)/N, log N). Beam positions are made
  relative to each axis' centre exposure and divided by the nominal L/2, a fixed constant, so a
  tuple's features never depend on the other tuples of its batch (the published code z-scored
  with batch statistics, which changes a tuple's prediction with the packet it arrives in).
* ``physics``: the exact per-axis harmonic fit of the 3 counts (DESIGN.md section 1): raw and
  background-corrected visibilities (nominal b = 1, v0 = 1), the closed-form projected
  separations and their hypot, the pair-midpoint offsets from the centre, the x/y photon split
  and log N. These are the sufficient quantities the physics estimators use, so a small tree
  ensemble only has to learn the correction for unknown background/brightness and the prior.

Everything is float32: numpy's float32 trig is much faster than float64 and the features only
need ~1e-6 relative precision.
"""

from __future__ import annotations

import numpy as np

from . import physics
from .estimators.closed_form import harmonic_fit
from .tuples import TupleBatch, count_totals

NOMINAL_BACKGROUND = 1.0  # counts per exposure assumed by the closed-form features
NOMINAL_V0 = 1.0

_AXES = ("x", "y")
_EXPOSURES = ("m", "0", "p")

PUBLISHED_FEATURES: tuple[str, ...] = (
    *(f"ratio_{a}{e}" for a in _AXES for e in _EXPOSURES),
    *(f"pos_{a}{e}" for a in _AXES for e in _EXPOSURES),
    "moddepth_x", "moddepth_y",
    "log_n",
)
PHYSICS_FEATURES: tuple[str, ...] = (
    "vis_raw_x", "vis_raw_y",
    "vis_bc_x", "vis_bc_y",
    "dcf_x", "dcf_y", "dcf",
    "mid_x", "mid_y",
    "frac_x",
    "log_n",
)
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "published": PUBLISHED_FEATURES,
    "physics": PHYSICS_FEATURES,
    "closed-form": ("dcf_x", "dcf_y", "dcf", "log_n"),  # ablation: the closed-form estimate + photon count
    "all": tuple(dict.fromkeys(PUBLISHED_FEATURES + PHYSICS_FEATURES)),
}
ALL_FEATURES = FEATURE_SETS["all"]

_F32_K = np.float32(physics.K_NM)
_SEP_SCALE = np.float32(physics.LAMBDA_NM / (2.0 * np.pi))


def count_sums(counts: np.ndarray, c: np.ndarray, totals: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n_tot (n,), per-axis totals (n, 2)) of float32 counts ``c`` = ``counts`` as float32
    (``totals``: :func:`.tuples.count_totals` of ``counts`` when the caller has them already).

    Integer counts sum exactly in any order below 2**24, so matrix products with ones (the totals by
    :func:`.tuples.count_totals`) give the very values of ``c.sum(...)``, several times faster than
    numpy's reduction over axes of length 3 and 6;
    non-integer input keeps numpy's own summation (its rounding is what the models were trained on)."""
    if np.asarray(counts).dtype.kind in "iu":
        n_tot = count_totals(counts) if totals is None else np.asarray(totals)
        return n_tot.astype(np.float32), c @ np.ones(3, np.float32)
    return c.sum(axis=(1, 2)), c.sum(axis=2)


def feature_names(feature_set: str) -> tuple[str, ...]:
    """Names of a feature set ("published", "physics" or "all")."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; known: {', '.join(FEATURE_SETS)}")
    return FEATURE_SETS[feature_set]


def _physics_columns(c: np.ndarray, positions: np.ndarray, n_tot: np.ndarray,
                     counts_axis: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Harmonic fit of each axis' 3 counts (the closed-form estimator's), in float32."""
    m0, m1, psi = harmonic_fit(c, positions, np.float32)
    safe_m0 = np.where(m0 > 0, m0, np.float32(1.0))
    vis_raw = np.where(m0 > 0, m1 / safe_m0, np.float32(0.0))
    denom = m0 - np.float32(NOMINAL_BACKGROUND)
    vis_bc = np.where(denom > 0, m1 / np.where(denom > 0, denom, np.float32(1.0)), np.float32(0.0))
    d_axes = _SEP_SCALE * np.arccos(np.clip(vis_bc / np.float32(NOMINAL_V0), 0.0, 1.0))
    # midpoint of the pair relative to the centre exposure: n_k is minimal where K(m - u) = 0
    mid = -psi / _F32_K
    n_axis = counts_axis if counts_axis is not None else c.sum(axis=2)
    return {
        "vis_raw_x": vis_raw[:, 0], "vis_raw_y": vis_raw[:, 1],
        "vis_bc_x": vis_bc[:, 0], "vis_bc_y": vis_bc[:, 1],
        "dcf_x": d_axes[:, 0], "dcf_y": d_axes[:, 1], "dcf": np.hypot(d_axes[:, 0], d_axes[:, 1]),
        "mid_x": mid[:, 0], "mid_y": mid[:, 1],
        "frac_x": n_axis[:, 0] / np.maximum(n_tot, np.float32(1.0)),
    }


def _published_columns(c: np.ndarray, positions: np.ndarray, n_tot: np.ndarray) -> dict[str, np.ndarray]:
    inv_n = np.float32(1.0) / np.maximum(n_tot, np.float32(1.0))
    ratio = c * inv_n[:, None, None]
    p = positions.astype(np.float32, copy=False)
    rel = (p - p[..., 1:2]) * np.float32(1.0 / physics.HALF_L_NM)
    mod = (c[..., 0] + c[..., 2] - 2.0 * c[..., 1]) * inv_n[:, None]
    cols = {}
    for i, a in enumerate(_AXES):
        for j, e in enumerate(_EXPOSURES):
            cols[f"ratio_{a}{e}"] = ratio[:, i, j]
            cols[f"pos_{a}{e}"] = rel[:, i, j]
        cols[f"moddepth_{a}"] = mod[:, i]
    return cols


def compute_features(counts: np.ndarray, positions: np.ndarray, names: tuple[str, ...] | list[str]) -> np.ndarray:
    """(n, len(names)) float32 C-contiguous feature matrix for counts/positions (n, 2, 3)."""
    counts = np.asarray(counts)
    positions = np.asarray(positions)
    if counts.ndim != 3 or counts.shape[1:] != (2, 3) or positions.shape != counts.shape:
        raise ValueError(f"counts and positions must both be (n, 2, 3); got {counts.shape} and {positions.shape}")
    unknown = set(names) - set(ALL_FEATURES)
    if unknown:
        raise ValueError(f"unknown feature names {sorted(unknown)}")
    c = counts.astype(np.float32)
    n_tot, n_axis = count_sums(counts, c)
    cols: dict[str, np.ndarray] = {"log_n": np.log1p(n_tot)}
    if any(name in PHYSICS_FEATURES for name in names):
        cols.update(_physics_columns(c, positions, n_tot, n_axis))
    if any(name in PUBLISHED_FEATURES and name not in cols for name in names):  # log_n is shared
        cols.update(_published_columns(c, positions, n_tot))
    out = np.empty((len(c), len(names)), np.float32)
    for j, name in enumerate(names):
        out[:, j] = cols[name]
    return out


def batch_features(batch: TupleBatch, names: tuple[str, ...] | list[str]) -> np.ndarray:
    """:func:`compute_features` for a :class:`TupleBatch`."""
    return compute_features(batch.counts, batch.positions, names)
