"""Tree-ensemble inference backends: XGBoost native, compiled (TL2cgen .so), and per-batch-size auto.

``load_backend(model_path, kind)`` is the one entry point. Every backend takes a float32 feature
matrix ``X`` (n, f) and returns float32 predictions, (n,) for single-output boosters and (n, k)
for multi-output ones (e.g. multi-quantile ``reg:quantileerror``). Workers are one process per
core, so every backend defaults to ONE thread; pass ``nthread`` to change that.

Kinds
-----
``xgboost``  ``Booster.inplace_predict`` (no DMatrix construction).
``compiled`` the booster compiled to a native shared library by :mod:`streamer.compile`
             (built once and cached in ``compiled_models/lib/``; a missing or stale library is
             rebuilt when the backend is loaded, i.e. at worker start, never per batch). The
             library is called directly through ctypes with the caller's float32 buffer: no
             TL2cgen DMatrix, no copies.
``auto``     routes each batch by its size to compiled or xgboost, using the crossover measured
             on this machine when the library was built (stored beside it as ``<lib>.so.json``;
             measured at load if missing). XGBoost is only loaded if it wins somewhere.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from .compile import ensure_library

BACKEND_KINDS = ("xgboost", "compiled", "auto")


class Backend(Protocol):
    """A loaded tree ensemble that maps features to predictions."""

    name: str
    num_feature: int
    num_target: int

    def predict(self, X: np.ndarray) -> np.ndarray: ...


def _as_features(X: np.ndarray, num_feature: int) -> np.ndarray:
    """C-contiguous float32 (n, num_feature) view of ``X``; clear error on a wrong shape."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != num_feature:
        raise ValueError(f"expected features of shape (n, {num_feature}), got {X.shape}")
    return np.ascontiguousarray(X, dtype=np.float32)


def _squeeze_targets(out: np.ndarray, num_target: int) -> np.ndarray:
    return out.reshape(-1) if num_target == 1 else out.reshape(-1, num_target)


class XGBoostBackend:
    """XGBoost's own predictor via ``inplace_predict`` (NaN = missing, as in training)."""

    def __init__(self, model_path: str | Path, nthread: int = 1) -> None:
        import xgboost as xgb

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        self.booster = xgb.Booster(model_file=str(path))
        self.nthread = int(nthread)
        # nthread <= 0 means all cores (XGBoost's own convention)
        self.booster.set_param({"nthread": self.nthread if self.nthread > 0 else 0})
        self.num_feature = self.booster.num_features()
        probe = self.booster.inplace_predict(np.zeros((1, self.num_feature), np.float32))
        self.num_target = 1 if probe.ndim == 1 else int(probe.shape[1])
        self.name = f"xgboost[{self.nthread if self.nthread > 0 else 'all'}t]"

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = _as_features(X, self.num_feature)
        if len(X) == 0:
            return _squeeze_targets(np.zeros((0, self.num_target), np.float32), self.num_target)
        out = self.booster.inplace_predict(X, validate_features=False)
        return _squeeze_targets(np.asarray(out, dtype=np.float32), self.num_target)


class CompiledBackend:
    """A TL2cgen-generated library with our batch entry point, called through ctypes.

    ``streamer_predict_batch`` walks the trees unit by unit over blocks of rows (see
    :mod:`streamer.compile` for why), writes into a caller-owned float32 buffer, and uses
    ``nthread`` OpenMP threads (1 = no threading at all).
    """

    def __init__(self, library: str | Path, nthread: int = 1, name: str | None = None) -> None:
        self.library = Path(library)
        if not self.library.is_file():
            raise FileNotFoundError(f"compiled library not found: {self.library}")
        self._lib = ctypes.CDLL(str(self.library.resolve()))
        fn = self._lib.streamer_predict_batch
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
        self._predict = fn
        self.num_feature = int(self._lib.get_num_feature())
        self.num_target = int(self._lib.get_num_target())
        self.nthread = int(nthread)
        self.name = name or f"compiled[{self.nthread}t]"
        # the array layout's AVX-512 walk (see streamer.core.compile): built in where it applies,
        # taken where the CPU has AVX-512F and STREAMER_TREES_VECTOR is not 0; same sums either way
        walk = getattr(self._lib, "streamer_vector_walk", None)
        if walk is not None:
            walk.restype, walk.argtypes = ctypes.c_int, [ctypes.c_int]
        self._vector_walk = walk

    @property
    def vector_built(self) -> bool:
        """Whether the library holds the AVX-512 walk (array layout, one output, depth <= 6)."""
        return self._vector_walk is not None

    @property
    def vector(self) -> bool:
        """Whether this library walks rows 16 per vector (AVX-512) on this CPU."""
        return bool(self._vector_walk(-1)) if self._vector_walk is not None else False

    def set_vector(self, on: bool) -> bool:
        """Turn the AVX-512 walk on (where the CPU has it) or off, for this library in this process
        (every backend loaded from the same file shares the switch); returns :attr:`vector`."""
        return bool(self._vector_walk(int(bool(on)))) if self._vector_walk is not None else False

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = _as_features(X, self.num_feature)
        out = np.empty((len(X), self.num_target), np.float32)
        if len(X):
            rc = self._predict(X.ctypes.data, len(X), out.ctypes.data, self.nthread)
            if rc != 0:
                raise RuntimeError(f"{self.library.name}: streamer_predict_batch failed ({rc})")
        return _squeeze_targets(out, self.num_target)


class AutoBackend:
    """Routes each batch to the backend measured fastest for its size on this machine.

    ``routes`` is a sorted list of ``(min_batch_size, backend)``; a batch of n rows goes to the
    last route whose ``min_batch_size <= n``.
    """

    def __init__(self, routes: list[tuple[int, Backend]]) -> None:
        if not routes:
            raise ValueError("AutoBackend needs at least one route")
        self.routes = sorted(routes, key=lambda r: r[0])
        self._sizes = np.array([r[0] for r in self.routes])
        first = self.routes[0][1]
        self.num_feature = first.num_feature
        self.num_target = first.num_target
        self.name = "auto(" + ", ".join(f"n>={n}:{b.name}" for n, b in self.routes) + ")"

    def backend_for(self, n: int) -> Backend:
        i = max(int(np.searchsorted(self._sizes, n, side="right")) - 1, 0)
        return self.routes[i][1]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.backend_for(len(X)).predict(X)


def load_backend(model_path: str | Path, kind: str = "auto", **opts) -> Backend:
    """Load the booster at ``model_path`` (XGBoost UBJ/JSON) as a backend of ``kind``.

    Options: ``nthread`` (default 1), and for ``compiled``/``auto`` the compile options of
    :func:`streamer.compile.ensure_library` (``lib_dir``, ``options``, ``build``). With
    ``build=False`` a missing library raises instead of compiling.
    """
    nthread = int(opts.pop("nthread", 1))
    if kind == "xgboost":
        if opts:
            raise ValueError(f"unknown options for xgboost backend: {sorted(opts)}")
        return XGBoostBackend(model_path, nthread=nthread)
    if kind not in ("compiled", "auto"):
        raise ValueError(f"unknown backend kind {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")

    lib = ensure_library(model_path, **opts)
    compiled = CompiledBackend(lib, nthread=nthread)
    if kind == "compiled":
        return compiled
    return AutoBackend(_auto_routes(lib, compiled, model_path, nthread))


def _auto_routes(lib: Path, compiled: CompiledBackend, model_path, nthread: int) -> list:
    """Routes from the crossover stored beside the library, measured once if not there yet.

    ``streamer compile`` measures it right after building (1 thread, the worker setting); other
    thread counts are measured the first time an auto backend with that count is loaded.
    """
    crossover = ensure_crossover(lib, model_path, nthread)
    routes: list[tuple[int, Backend]] = [(0, compiled)]
    if crossover and crossover.get("xgboost_from") is not None:
        routes.append((int(crossover["xgboost_from"]), XGBoostBackend(model_path, nthread=nthread)))
    return routes


# --------------------------------------------------------------------------- crossover (measured here: loading is this module's job)

CALIBRATION_SIZES = (1, 10, 100, 1000, 10000)


def measure_us_per_row(backend, X, min_time_s: float = 0.05, max_repeat: int = 200) -> float:
    """Best-of-repeats microseconds per row for ``backend.predict`` on ``X``."""
    backend.predict(X)  # warm-up (page in code, first-call overheads)
    best = float("inf")
    spent, reps = 0.0, 0
    while (spent < min_time_s or reps < 3) and reps < max_repeat:
        t = time.perf_counter()
        backend.predict(X)
        dt = time.perf_counter() - t
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best / len(X) * 1e6


def write_crossover(lib: str | Path, model_path: str | Path, nthreads=(1,), sizes=CALIBRATION_SIZES,
                    seed: int = 0) -> dict:
    """Measure compiled vs xgboost us/row per batch size here; store the crossover beside ``lib``.

    Rows are random within each feature's split-threshold range so that every tree path is
    exercised. ``xgboost_from`` is the smallest measured size from which xgboost is faster at
    every larger measured size (``None`` = compiled wins everywhere).
    """
    lib = Path(lib)
    meta_path = Path(str(lib) + ".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    crossover = meta.get("crossover", {})
    for nt in nthreads:
        xgb_b = XGBoostBackend(model_path, nthread=nt)
        comp = CompiledBackend(lib, nthread=nt)
        X = random_features(model_path, max(sizes), seed)
        rows = []
        for n in sizes:
            rows.append({"n": n, "xgboost": measure_us_per_row(xgb_b, X[:n]),
                         "compiled": measure_us_per_row(comp, X[:n])})
        xgb_from = None
        for r in reversed(rows):
            if r["xgboost"] < r["compiled"]:
                xgb_from = r["n"]
            else:
                break
        crossover[f"{nt}t"] = {"xgboost_from": xgb_from, "us_per_row": rows}
    meta["crossover"] = crossover
    meta_path.write_text(json.dumps(meta, indent=1))
    return crossover


def ensure_crossover(lib: str | Path, model_path: str | Path, nthread: int = 1) -> dict:
    """The stored crossover for ``nthread`` threads, measuring it first (once, under a lock)."""
    lib = Path(lib)
    meta_path = Path(str(lib) + ".json")
    key = f"{nthread}t"

    def stored():
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        return meta.get("crossover", {}).get(key)

    if stored() is None:
        with open(lib.parent / f".{lib.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if stored() is None:
                write_crossover(lib, model_path, nthreads=(nthread,))
    return stored()


def random_features(model_path: str | Path, n: int, seed: int = 0):
    """(n, f) float32 rows uniform over each feature's split-threshold range in the model."""
    import numpy as np
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(model_path))
    nf = booster.num_features()
    df = booster.trees_to_dataframe()
    splits = df[df["Feature"] != "Leaf"]
    lo, hi = np.zeros(nf), np.ones(nf)
    names = booster.feature_names or [f"f{i}" for i in range(nf)]
    for j, name in enumerate(names):
        s = splits.loc[splits["Feature"] == name, "Split"]
        if len(s):
            span = max(float(s.max() - s.min()), 1e-6)
            lo[j], hi[j] = s.min() - 0.05 * span, s.max() + 0.05 * span
    rng = np.random.default_rng(seed)
    return (lo + (hi - lo) * rng.random((n, nf))).astype(np.float32)
