"""Hensel et al. (Nat. Phys. 2024, Zenodo 10.5281/zenodo.10625021) ``parsed.pkl`` -> :class:`Recording`.

Layout (written by ``MinfluxParser._transform_otto`` / ``_save_frame`` of the authors' code): a pandas
DataFrame pickled with ``DataFrame.to_pickle``, one row per exposure, columns

  pos (beam-minimum coordinate, nm) | photons | gt (nominal distance, nm) | batch | axis (0 = x, 1 = y)
  | tuple (tuple index within the file) | trace (ruler index within the file) | experiment_id (str)

stored as ``.../<NN>nm/.../<experiment>/parsed.pkl``; the folder name gives the nominal distance.
The authors' ``process_batch`` writes ``<session>/parsed/<rel>/<experiment>/parsed.pkl``, then
``<session>/filtered/<rel>/<experiment>/filtered.pkl`` and ``segmented.pkl`` (rows with ``segment_id``
and ``state_id``: 2 = both emitters on, 1 = one on, 0 = background) and
``<session>/filtered/filter-results.pkl`` (state per ``experiment_id`` x ``segment_id``). When such a state file is
found (or given) only two-emitter tuples are kept.

The pivot to (n, 2, 3) is vectorized: ``factorize`` for the tuple key, ``bincount`` for completeness,
``lexsort`` + ``reshape`` for ordering. No per-tuple Python loops (0.15-0.3 M tuples/s including unpickling, 2 shared cores).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..recording import Recording
from ..tuples import TupleBatch

REQUIRED_COLUMNS = ("pos", "photons", "axis", "tuple")
STATE_FILE_NAMES = ("filtered.pkl", "segmented.pkl")
STATE_RESULTS_NAME = "filter-results.pkl"
STATE_TWO = 2
TRACE_BITS = 32  # trace_id = experiment_index << 32 | trace
_DISTANCE_DIR = re.compile(r"^(\d+(?:\.\d+)?)\s*nm$", re.IGNORECASE)
#: source unit -> factor to nm, and the plausible range (in that unit) of the outer-exposure spacing L
_UNITS = {"nm": (1.0, (1.0, 2000.0)), "um": (1e3, (1e-3, 2.0)), "m": (1e9, (1e-9, 2e-6))}


@dataclass
class HenselReport:
    """What the conversion kept and dropped, for the user and for ``meta``."""

    files: list[str] = field(default_factory=list)
    rows: int = 0
    tuples_seen: int = 0
    incomplete_dropped: int = 0
    degenerate_dropped: int = 0
    state_dropped: int = 0
    state_files: list[str] = field(default_factory=list)
    pos_unit: str = "nm"

    def as_meta(self) -> dict:
        return dict(self.__dict__)


def nominal_distance_from_path(path: Path) -> float | None:
    """The nearest enclosing folder named like ``20nm`` / ``08nm`` -> 20.0 / 8.0 (None if there is none)."""
    for part in reversed(Path(path).parts[:-1]):
        m = _DISTANCE_DIR.match(part)
        if m:
            return float(m.group(1))
    return None


def find_parsed_files(root: Path) -> list[Path]:
    """All ``parsed.pkl`` below ``root`` (sorted, so conversions are reproducible)."""
    return sorted(p for p in Path(root).rglob("parsed.pkl") if p.is_file())


def find_state_file(parsed: Path) -> Path | None:
    """A state/segment file belonging to ``parsed``: same folder, else the mirrored ``filtered/`` tree."""
    parsed = Path(parsed)
    candidates = [parsed.parent / n for n in STATE_FILE_NAMES]
    parts = list(parsed.parent.parts)
    for i in range(len(parts) - 1, -1, -1):  # nearest "parsed" component -> "filtered"
        if parts[i] == "parsed":
            mirrored = Path(*parts[:i], "filtered", *parts[i + 1:])
            candidates += [mirrored / n for n in STATE_FILE_NAMES]
            break
    return next((c for c in candidates if c.is_file()), None)


def _find_results_file(state_file: Path) -> Path | None:
    """The nearest ``filter-results.pkl`` above a state file (the authors write it at the filtered/ root)."""
    return next((p / STATE_RESULTS_NAME for p in Path(state_file).parents if (p / STATE_RESULTS_NAME).is_file()),
                None)


def read_frame(path: Path, what: str = "parsed.pkl") -> pd.DataFrame:
    """``pandas.read_pickle`` with errors that name the file. Only open pickles you trust."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        df = pd.read_pickle(path)
    except Exception as exc:  # pickle raises many types; all mean "not a readable frame"
        raise ValueError(f"{path}: cannot read as a pandas pickle ({what}): {type(exc).__name__}: {exc}") from exc
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{path}: expected a pandas DataFrame ({what}), found {type(df).__name__}")
    return df


def _numeric(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(f"{path}: column '{col}' has {int(bad.sum())} non-numeric or non-finite value(s) "
                         f"(first at row {int(np.flatnonzero(bad)[0])})")
    return values


def _integral(values: np.ndarray, col: str, path: Path) -> np.ndarray:
    if not np.all(values == np.round(values)):
        raise ValueError(f"{path}: column '{col}' must hold integers, found e.g. "
                         f"{values[values != np.round(values)][0]!r}")
    return values.astype(np.int64)


def _tuple_states(state_path: Path, exp: np.ndarray, tup: np.ndarray, report: HenselReport) -> np.ndarray:
    """State of each parsed row's tuple from a Hensel state/segment file (-1 where unknown or mixed)."""
    st = read_frame(state_path, "state/segment file")
    if "tuple" not in st.columns:
        raise ValueError(f"{state_path}: state/segment file needs a 'tuple' column; found {list(st.columns)}")
    if "experiment_id" in st.columns:
        st_exp = st["experiment_id"].astype(str).to_numpy()
    else:
        uniq = np.unique(exp)
        if len(uniq) != 1:
            raise ValueError(f"{state_path}: has no 'experiment_id' column but the parsed data holds "
                             f"{len(uniq)} experiments; cannot match tuples")
        st_exp = np.full(len(st), uniq[0])
    state = (pd.to_numeric(st["state_id"], errors="coerce").to_numpy(np.float64) if "state_id" in st.columns
             else np.full(len(st), np.nan))
    results = _find_results_file(state_path) if "segment_id" in st.columns else None
    if results is not None:  # the authors' post-filtering assigns states per (experiment, segment)
        res = read_frame(results, STATE_RESULTS_NAME)
        need = {"experiment_id", "segment_id", "state_id"}
        if not need <= set(res.columns):
            raise ValueError(f"{results}: needs columns {sorted(need)}; found {list(res.columns)}")
        res = pd.DataFrame({"experiment_id": res["experiment_id"].astype(str),
                            "segment_id": pd.to_numeric(res["segment_id"], errors="coerce"),
                            "state_id": pd.to_numeric(res["state_id"], errors="coerce")}).dropna()
        res = res.drop_duplicates(["experiment_id", "segment_id"])
        keys = pd.DataFrame({"experiment_id": st_exp,
                             "segment_id": pd.to_numeric(st["segment_id"], errors="coerce").to_numpy()})
        from_results = keys.merge(res, how="left", on=["experiment_id", "segment_id"])["state_id"].to_numpy()
        state = np.where(np.isnan(state), from_results, state)
        report.state_files.append(str(results))
    if np.isnan(state).all():
        raise ValueError(f"{state_path}: no 'state_id' values (and no {STATE_RESULTS_NAME} with states for its "
                         f"'segment_id') - cannot tell two-emitter tuples; pass --no-states to ignore it")
    report.state_files.append(str(state_path))
    st_tup = pd.to_numeric(st["tuple"], errors="coerce").to_numpy(np.float64)
    if not np.all(st_tup == np.round(st_tup)):
        raise ValueError(f"{state_path}: column 'tuple' must hold integer tuple indices (binned/averaged "
                         f"filter output cannot be matched to exposures)")
    frame = pd.DataFrame({"experiment_id": st_exp, "tuple": st_tup.astype(np.int64),
                          "state": np.nan_to_num(state, nan=-1).astype(np.int64)})
    agg = frame.groupby(["experiment_id", "tuple"])["state"].agg(["min", "max"])
    tuple_state = agg["min"].where(agg["min"] == agg["max"], -1)
    idx = pd.MultiIndex.from_arrays([exp, tup], names=["experiment_id", "tuple"])
    return tuple_state.reindex(idx).fillna(-1).to_numpy().astype(np.int64)


def _read_one(path: Path, states: Path | None | bool, report: HenselReport) -> tuple[dict[str, np.ndarray], list]:
    """One parsed.pkl -> per-row numeric columns (exp = index into the returned experiment names)."""
    df = read_frame(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected a Hensel parsed.pkl with columns "
                         f"{list(REQUIRED_COLUMNS)} (+ trace, experiment_id, gt); found {list(df.columns)}")
    if len(df) == 0:
        raise ValueError(f"{path}: parsed.pkl holds no rows")
    n = len(df)
    exp_names = (df["experiment_id"].astype(str) if "experiment_id" in df.columns
                 else pd.Series(np.full(n, str(path.parent))))
    exp, names = pd.factorize(exp_names, sort=False)
    cols = {
        "pos": _numeric(df, "pos", path),
        "photons": _numeric(df, "photons", path),
        "axis": _integral(_numeric(df, "axis", path), "axis", path),
        "tuple": _integral(_numeric(df, "tuple", path), "tuple", path),
        "trace": (_integral(_numeric(df, "trace", path), "trace", path) if "trace" in df.columns
                  else np.zeros(n, np.int64)),
        "gt": _numeric(df, "gt", path) if "gt" in df.columns else np.full(n, np.nan),
        "exp": exp.astype(np.int64),
    }
    bad_axis = ~np.isin(cols["axis"], (0, 1))
    if bad_axis.any():
        found = sorted(set(cols["axis"][bad_axis].tolist()))
        raise ValueError(f"{path}: column 'axis' must be 0 (x) or 1 (y); found {found}")
    ph = cols["photons"]
    if (ph < 0).any() or (ph > np.iinfo(np.uint16).max).any() or not np.all(ph == np.round(ph)):
        raise ValueError(f"{path}: column 'photons' must hold integer counts in [0, 65535]; "
                         f"found range [{ph.min()}, {ph.max()}]")
    for col in ("trace", "tuple"):
        if (cols[col] < 0).any() or (cols[col] >= 1 << TRACE_BITS).any():
            raise ValueError(f"{path}: column '{col}' must be in [0, 2**{TRACE_BITS})")
    state_path = None
    if states is not False:
        state_path = Path(states) if isinstance(states, (str, Path)) else find_state_file(path)
    cols["state"] = (np.full(n, -1, np.int64) if state_path is None
                     else _tuple_states(state_path, exp_names.to_numpy(), cols["tuple"], report))
    nominal = nominal_distance_from_path(path)
    cols["nominal"] = np.full(n, np.nan if nominal is None else nominal)
    report.files.append(str(path))
    report.rows += n
    return cols, [str(x) for x in names]


def _concat(parts: list[tuple[dict[str, np.ndarray], list]]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Stack files; experiment indices become global (the same experiment id in two files is one experiment)."""
    index: dict[str, int] = {}
    for cols, names in parts:
        remap = np.array([index.setdefault(name, len(index)) for name in names], np.int64)
        cols["exp"] = remap[cols["exp"]]
    return {k: np.concatenate([c[k] for c, _ in parts]) for k in parts[0][0]}, list(index)


def _scale_to_nm(spacing: np.ndarray, pos_unit: str, source: str) -> tuple[float, str]:
    """Factor to nm: given, or inferred from the median outer-exposure spacing L of the tuples."""
    typical = float(np.median(spacing))
    if pos_unit != "auto":
        if pos_unit not in _UNITS:
            raise ValueError(f"pos unit must be one of auto/{'/'.join(_UNITS)}, got {pos_unit!r}")
        return _UNITS[pos_unit][0], pos_unit
    for unit, (factor, (lo, hi)) in _UNITS.items():
        if lo <= typical <= hi:
            return factor, unit
    raise ValueError(f"{source}: cannot infer the unit of 'pos': median spacing between outer exposures is "
                     f"{typical:g}, which fits none of nm [1, 2000], um [0.001, 2], m [1e-9, 2e-6]; "
                     f"pass --pos-unit")


def pivot_exposures(long: dict[str, np.ndarray], source: str, report: HenselReport,
                    pos_unit: str = "auto") -> tuple[TupleBatch, np.ndarray, np.ndarray, np.ndarray]:
    """Per-exposure rows -> complete tuples (n, 2, 3), vectorized; also per-tuple gt, nominal and state.

    A tuple is (experiment, tuple index); it is complete with exactly 3 exposures on x and 3 on y.
    ``trace_id`` = experiment index << 32 | trace.
    """
    key = (long["exp"] << TRACE_BITS) | long["tuple"]
    tkey, uniq = pd.factorize(key, sort=True)  # sorted: tuples come out in (experiment, tuple) order
    n_keys = len(uniq)
    report.tuples_seen += n_keys
    axis = long["axis"]
    per_axis = np.bincount(tkey * 2 + axis, minlength=2 * n_keys).reshape(n_keys, 2)
    complete = (per_axis == 3).all(axis=1)
    report.incomplete_dropped += int((~complete).sum())
    rows = np.flatnonzero(complete[tkey])
    if len(rows) == 0:
        raise ValueError(f"{source}: no complete tuples (3 exposures on x and 3 on y) among {n_keys} tuple(s)")
    order = rows[np.lexsort((long["pos"][rows], tkey[rows] * 2 + axis[rows]))]
    n = len(order) // 6
    positions = long["pos"][order].reshape(n, 2, 3)
    counts = long["photons"][order].reshape(n, 2, 3)
    first = order[::6]
    for col in ("trace", "state", "nominal", "gt"):  # must agree across a tuple's 6 exposures
        g = long[col][order].astype(np.float64).reshape(n, 6)
        same = (g == g[:, :1]) | (np.isnan(g) & np.isnan(g[:, :1]))
        if not same.all():
            raise ValueError(f"{source}: column '{col}' differs within {int((~same.all(1)).sum())} tuple(s)")
    distinct = (np.diff(positions, axis=2) > 0).all(axis=(1, 2))  # 3 distinct beam positions per axis
    if not distinct.any():
        raise ValueError(f"{source}: every complete tuple has coinciding beam positions on an axis")
    factor, unit = _scale_to_nm(positions[distinct, :, 2] - positions[distinct, :, 0], pos_unit, source)
    report.pos_unit = unit
    positions_nm = (positions * factor).astype(np.float32)
    ok = distinct & (np.diff(positions_nm, axis=2) > 0).all(axis=(1, 2))  # still distinct in float32
    report.degenerate_dropped += int((~ok).sum())
    trace_id = (long["exp"][first] << TRACE_BITS) | long["trace"][first]
    batch = TupleBatch.build(counts[ok].astype(np.uint16), positions_nm[ok], trace_id[ok], None)
    return batch, long["gt"][first][ok], long["nominal"][first][ok], long["state"][first][ok].astype(np.int8)


def load_hensel(path: str | Path, *, states: str | Path | bool | None = None, two_emitter_only: bool = True,
                distance_nm: float | None = None, pos_unit: str = "auto") -> tuple[Recording, HenselReport]:
    """Convert one ``parsed.pkl`` or every ``parsed.pkl`` below a folder.

    states: None = use a state/segment file when one is found next to / mirrored from each parsed.pkl,
    a path = use that file (single parsed.pkl only), False = ignore state files.
    two_emitter_only: with state information, keep only tuples whose state is 2 (both emitters on).
    distance_nm: nominal distance overriding folder name and ``gt``.
    """
    path = Path(path)
    files = find_parsed_files(path) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path}: no parsed.pkl below this folder")
    if isinstance(states, (str, Path)) and len(files) > 1:
        raise ValueError(f"{path}: an explicit state file applies to a single parsed.pkl, not {len(files)} files")
    report = HenselReport()
    long, experiments = _concat([_read_one(f, states, report) for f in files])
    batch, gt, nominal, state = pivot_exposures(long, str(path), report, pos_unit)

    d_nm = _truth_distance(gt, nominal, distance_nm, str(path))
    has_states = bool(report.state_files)
    truth = {} if d_nm is None else {"d_nm": d_nm}
    if has_states:
        truth["state"] = state
        if two_emitter_only:
            keep = state == STATE_TWO
            report.state_dropped = int((~keep).sum())
            if not keep.any():
                raise ValueError(f"{path}: no two-emitter tuples (state 2) left after applying "
                                 f"{report.state_files}")
            batch = batch[keep]
            truth = {k: v[keep] for k, v in truth.items()}
    meta = {
        "source": "hensel-parsed-pkl",
        "source_path": str(path),
        "nominal_distance_nm": np.unique(truth["d_nm"]).tolist() if "d_nm" in truth else None,
        "pos_unit_in_source": report.pos_unit,
        "trace_id_encoding": f"experiment_index << {TRACE_BITS} | trace",
        "experiments": experiments,
        "two_emitter_only": bool(has_states and two_emitter_only),
        "conversion": report.as_meta(),
    }
    return Recording(batch, truth, meta), report


def _truth_distance(gt: np.ndarray, nominal: np.ndarray, override: float | None, source: str) -> np.ndarray | None:
    """Nominal distance per tuple: override > folder name > ``gt`` column; folder and gt must agree."""
    if override is not None:
        return np.full(len(gt), float(override))
    has_gt, has_dir = np.isfinite(gt), np.isfinite(nominal)
    disagree = has_gt & has_dir & (np.abs(gt - nominal) > 0.5)
    if disagree.any():
        i = int(np.flatnonzero(disagree)[0])
        raise ValueError(f"{source}: folder name says {nominal[i]:g} nm but column 'gt' says {gt[i]:g} nm "
                         f"for {int(disagree.sum())} tuple(s); pass --distance-nm to choose")
    d = np.where(has_dir, nominal, gt)
    if np.isnan(d).all():
        return None
    if np.isnan(d).any():
        raise ValueError(f"{source}: {int(np.isnan(d).sum())} tuple(s) have no nominal distance (no 'NNnm' "
                         f"folder and no 'gt'); pass --distance-nm")
    return d.astype(np.float64)
