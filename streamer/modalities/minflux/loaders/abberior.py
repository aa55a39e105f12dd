"""Abberior Imspector MINFLUX exports (``.npy`` structured arrays, ``.mat``) -> :class:`Recording`.

Two export layouts are recognised (field lists from pyMINFLUX's readers and the infoFLUX / J. Keller-
Findeisen field descriptions, see README "Real data"):

* nested (Imspector m2205 and earlier): one record per localization; ``itr`` is a structured
  sub-array with one entry per iteration (fields itr, tic, loc, lnc, eco, ecc, efo, efc, sta, cfr, dcr,
  ext, gvx, gvy, eox, eoy, dmz, lcx, lcy, lcz, fbg); top level tid, tim, vld, sqi, gri, act, dos, sky.
  In ``.mat`` files ``itr`` is a MATLAB struct whose fields are (N, iterations[, 3]) arrays.
* flat (Imspector m2410): one record per iteration: vld, fnl (final iteration), tid, tim, itr (iteration
  index), loc, lnc, eco, ecc, efo, efc, cfr, dcr, fbg, ...

Positions (loc, lnc, ext, lcx/lcy) are in metres. None of the documented fields holds photon counts
per exposure: eco/ecc are photons summed over the pattern's outer/centre exposures and efo/efc the same
as rates. The two-emitter distance estimator needs the 3 counts per axis at known beam positions, so the
loader requires a per-exposure field (default ``phe``: 6 counts per localization, x at c-L/2, c, c+L/2,
then y) and refuses exports that only carry aggregates, saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..physics import beam_positions
from ..recording import Recording
from ..tuples import TupleBatch

DEFAULT_COUNTS_FIELD = "phe"
AGGREGATE_FIELDS = ("eco", "ecc", "efo", "efc")
M_TO_NM = 1e9


@dataclass
class AbberiorExport:
    """Fields of the final iteration, one row per localization attempt, plus provenance."""

    path: Path
    layout: str
    fields: dict[str, np.ndarray]


def _read_npy(path: Path) -> AbberiorExport:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy array: {exc}") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.names is None:
        raise ValueError(f"{path}: expected an Imspector MINFLUX export (structured array with fields such as "
                         f"itr, tid, tim, vld); found a plain array of dtype {getattr(arr, 'dtype', '?')}")
    arr = arr.reshape(-1)
    names = list(arr.dtype.names)
    if "itr" not in names:
        raise ValueError(f"{path}: structured array lacks the 'itr' field of an Imspector MINFLUX export; "
                         f"found fields {names}")
    itr = arr["itr"]
    if itr.dtype.names is not None:  # nested: itr is (N, iterations) of records
        if itr.ndim != 2 or itr.shape[1] == 0:
            raise ValueError(f"{path}: field 'itr' should be (localizations, iterations), got shape {itr.shape}")
        last = itr[:, -1]
        fields = {n: arr[n] for n in names if n != "itr"}
        fields.update({n: last[n] for n in itr.dtype.names})
        return AbberiorExport(path, "nested (Imspector <= m2205)", fields)
    return _final_rows(AbberiorExport(path, "flat (Imspector m2410)", {n: arr[n] for n in names}))


def _final_rows(exp: AbberiorExport) -> AbberiorExport:
    """Flat layout: keep the final iteration of each localization (``fnl``, else the highest ``itr``)."""
    f = exp.fields
    final = (np.asarray(f["fnl"]).astype(bool).reshape(-1) if "fnl" in f
             else np.asarray(f["itr"]).reshape(-1) == np.max(f["itr"]))
    exp.fields = {k: np.asarray(v)[final] for k, v in f.items()}
    return exp


def _read_mat(path: Path) -> AbberiorExport:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path, squeeze_me=False, struct_as_record=True)
    except NotImplementedError as exc:  # scipy's answer for v7.3 (HDF5) files
        raise ValueError(f"{path}: MATLAB v7.3 (HDF5) file, which scipy cannot read ({exc}). Re-export from "
                         f"Imspector as .npy, or re-save in MATLAB with save(..., '-v7'); reading v7.3 "
                         f"needs h5py, which is not a dependency of this project") from exc
    except (ValueError, TypeError, OSError, MatReadError) as exc:
        raise ValueError(f"{path}: not a readable MATLAB .mat file: {exc}") from exc
    variables = {k: v for k, v in mat.items() if not k.startswith("__")}
    if "itr" not in variables:
        raise ValueError(f"{path}: lacks the 'itr' variable of an Imspector MINFLUX export; found "
                         f"{sorted(variables)}")
    if "vld" not in variables:
        raise ValueError(f"{path}: lacks the 'vld' variable of an Imspector MINFLUX export; found "
                         f"{sorted(variables)}")
    n = np.asarray(variables["vld"]).size
    itr = variables["itr"]
    if itr.dtype.names is not None:  # nested: MATLAB struct, fields (N, iterations[, 3])
        struct = itr.reshape(-1)[0]
        fields = {k: _rows(v, n, path, k) for k, v in variables.items() if k != "itr"}
        for name in itr.dtype.names:
            value = np.asarray(struct[name])
            if value.ndim < 2 or value.shape[0] != n:
                raise ValueError(f"{path}: itr.{name} should be (localizations={n}, iterations[, k]), "
                                 f"got shape {value.shape}")
            fields[name] = value[:, -1]
        return AbberiorExport(path, "nested (Imspector <= m2205)", fields)
    fields = {k: _rows(v, n, path, k) for k, v in variables.items()}
    return _final_rows(AbberiorExport(path, "flat (Imspector m2410)", fields))


def _rows(value: np.ndarray, n: int, path: Path, name: str) -> np.ndarray:
    """MATLAB stores vectors as (1, n) or (n, 1) and matrices as (n, k): make rows the first axis."""
    value = np.asarray(value)
    if value.size == n:
        return value.reshape(n)
    if value.ndim >= 1 and value.shape[0] == n:
        return value
    if value.ndim == 2 and value.shape[1] == n:
        return value.T
    if value.size == 1:  # a scalar setting stored alongside
        return np.broadcast_to(value.reshape(()), (n,))
    raise ValueError(f"{path}: variable '{name}' has shape {value.shape}, not one row per localization ({n})")


def read_export(path: str | Path) -> AbberiorExport:
    """Open an Imspector ``.npy`` / ``.mat`` export and return the final-iteration fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path)
    if suffix == ".mat":
        return _read_mat(path)
    raise ValueError(f"{path}: Abberior exports are .npy or .mat, not '{suffix}'")


def _require(exp: AbberiorExport, name: str, why: str) -> np.ndarray:
    if name not in exp.fields:
        raise ValueError(f"{exp.path}: {exp.layout} export lacks field '{name}' ({why}); "
                         f"found {sorted(exp.fields)}")
    return np.asarray(exp.fields[name])


def _counts(exp: AbberiorExport, counts_field: str) -> np.ndarray:
    if counts_field not in exp.fields:
        aggregates = [f for f in AGGREGATE_FIELDS if f in exp.fields]
        have = (f"it carries only aggregated counts ({', '.join(aggregates)}: photons summed over all exposures "
                f"of the pattern, or their rates)" if aggregates else "it carries no photon counts at all")
        raise ValueError(
            f"{exp.path}: {exp.layout} export has no per-exposure photon counts field '{counts_field}'; {have}. "
            f"The two-emitter distance estimator needs the 3 counts per axis at known beam positions "
            f"(c-L/2, c, c+L/2 on x and y), which cannot be recovered from a sum. Export the per-exposure "
            f"counts as a field of 6 integers per localization (x then y), or name it with --counts-field. "
            f"Fields found: {sorted(exp.fields)}")
    raw = np.asarray(exp.fields[counts_field], dtype=np.float64)
    n = len(raw)
    if raw.size != 6 * n or raw.ndim < 2:
        raise ValueError(f"{exp.path}: field '{counts_field}' must hold 6 counts per localization "
                         f"((n, 6) or (n, 2, 3)); got shape {raw.shape}")
    return raw.reshape(n, 2, 3)


def load_abberior(path: str | Path, *, counts_field: str = DEFAULT_COUNTS_FIELD, half_l_nm: float | None = None,
                  distance_nm: float | None = None) -> tuple[Recording, dict]:
    """Valid final-iteration localizations with per-exposure counts -> Recording (positions in nm).

    Beam positions: pattern centre c = loc - (lcx, lcy) when the relative localization fields exist
    (nested layout), else loc; exposures at c - L/2, c, c + L/2 with L/2 = ``half_l_nm`` or ext/2.
    The separation estimate only depends on positions relative to the centre, so the centre choice
    does not bias distances.
    """
    exp = read_export(path)
    n_all = len(_require(exp, "vld", "validity flag"))
    valid = _require(exp, "vld", "validity flag").astype(bool).reshape(-1)
    counts = _counts(exp, counts_field)
    loc = _require(exp, "loc", "localization, metres").astype(np.float64).reshape(n_all, -1)
    if loc.shape[1] < 2:
        raise ValueError(f"{exp.path}: field 'loc' should hold x, y[, z] per localization; got {loc.shape}")
    tid = _require(exp, "tid", "trace id").astype(np.int64).reshape(-1)
    tim = _require(exp, "tim", "time, s").astype(np.float64).reshape(-1)
    centre = loc[:, :2].copy()
    centre_from = "loc"
    if "lcx" in exp.fields and "lcy" in exp.fields:
        rel = np.stack([np.asarray(exp.fields["lcx"], np.float64).reshape(-1),
                        np.asarray(exp.fields["lcy"], np.float64).reshape(-1)], axis=1)
        if np.isfinite(rel[valid]).all():
            centre -= rel
            centre_from = "loc - (lcx, lcy)"
    if half_l_nm is not None:
        if not (np.isfinite(half_l_nm) and half_l_nm > 0):
            raise ValueError(f"half L must be a positive number of nm, got {half_l_nm}")
        half = np.full((n_all, 2), float(half_l_nm))
        half_from = "given"
    elif "ext" in exp.fields:
        ext = np.asarray(exp.fields["ext"], np.float64).reshape(n_all, -1)
        half = ext[:, :2] / 2.0 * M_TO_NM
        half_from = "ext / 2"
    else:
        raise ValueError(f"{exp.path}: {exp.layout} export has no 'ext' (pattern extent) field to derive the "
                         f"beam offsets L/2 from; pass --half-l-nm")
    keep = valid & np.isfinite(loc[:, :2]).all(axis=1) & np.isfinite(half).all(axis=1) & (half > 0).all(axis=1)
    if not keep.any():
        raise ValueError(f"{exp.path}: no valid final-iteration localizations with finite loc and L/2 "
                         f"({int(valid.sum())} of {n_all} flagged valid)")
    c = counts[keep]
    bad = ~np.isfinite(c) | (c < 0) | (c > np.iinfo(np.uint16).max) | (c != np.round(c))
    if bad.any():
        raise ValueError(f"{exp.path}: field '{counts_field}' must hold integer counts in [0, 65535]; "
                         f"{int(bad.any(axis=(1, 2)).sum())} valid localization(s) do not")
    if not np.isfinite(tim[keep]).all():
        raise ValueError(f"{exp.path}: field 'tim' has {int((~np.isfinite(tim[keep])).sum())} non-finite "
                         f"value(s) among the kept localizations")
    rows = np.flatnonzero(keep)
    time_sorted = bool((np.diff(tim[rows]) >= 0).all())
    if not time_sorted:  # replay order is acquisition order; packets require non-decreasing time
        rows = rows[np.argsort(tim[rows], kind="stable")]
    positions = beam_positions(centre[rows] * M_TO_NM, half[rows])
    batch = TupleBatch.build(counts[rows].astype(np.uint16), positions.astype(np.float32), tid[rows], tim[rows])
    truth = {} if distance_nm is None else {"d_nm": np.full(len(batch), float(distance_nm))}
    report = {
        "localizations": n_all,
        "invalid_dropped": int((~valid).sum()),
        "unlocalized_dropped": int((valid & ~keep).sum()),
        "kept": int(keep.sum()),
        "resorted_by_time": not time_sorted,
    }
    meta = {
        "source": f"abberior-{exp.path.suffix.lower().lstrip('.')}",
        "source_path": str(exp.path),
        "layout": exp.layout,
        "counts_field": counts_field,
        "centre_from": centre_from,
        "half_l_from": half_from,
        "pos_unit_in_source": "m",
        "nominal_distance_nm": None if distance_nm is None else [float(distance_nm)],
        "conversion": report,
    }
    return Recording(batch, truth, meta), report
