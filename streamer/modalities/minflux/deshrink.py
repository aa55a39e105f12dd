"""Undoing the general model's pull toward the middle of its distance range, per instrument.

The point booster predicts the posterior mean E[d | tuple]. Where a tuple carries little
information that mean is pulled toward the middle of the trained range (on the issue's grid: -8 nm
at 55 nm, +3 nm at 10 nm), so a ruler measured with few photons reads wrong however many tuples
are averaged. How strong the pull is depends on the instrument (v0, b, L/2) and the photon count,
which is why the earlier map per information bin failed: it mixed instruments whose pull differs.

Here the response curve m(d | v0, b, L/2, N) = E[d_hat | d, instrument, N] is learned once, at
training time, by a booster regressing d_hat - d on (d, instrument, N) over simulated rulers. Its
inputs do not depend on the tuple's counts, so the fit is the conditional mean. It is tabulated on
a grid and shipped as a table (``deshrink.npz``). At run time the curve of each instrument is
interpolated from the table and inverted per photon node (cached per instrument), and a tuple's
fully de-shrunk distance is m^-1(d_hat).

Full inversion removes the bias but costs variance where the curve is flat (the posterior mean's
RMSE is often well below the per-tuple MLE's). So only the part of the correction that exceeds
``keep`` x max(1 nm, 0.1 CRB) is applied (a soft threshold; CRB at the de-shrunk distance): a
bias below a tenth of the tuple's own noise floor is left, and the posterior mean's lower
variance kept there. ``keep`` = 0.7 was chosen on a development grid (seed 4242, never the test
grid): 0.5 / 0.7 / 0.9 met all three criteria in 64 / 67 / 65 of 90 cells, full inversion in 57.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict

import numpy as np

from ...core.jit import jit

FILE = "deshrink.npz"

#: the table's nodes: v0 (interpolated in u = log(1.0001 - v0): the pull changes fastest as v0 -> 1),
#: background (in log b), L/2, photons (in log1p N, as the feature log_n) and true distance
V0_NODES = (0.78, 0.82, 0.86, 0.89, 0.92, 0.945, 0.965, 0.98, 0.99, 0.995, 0.998, 0.9993, 0.9998, 0.99995, 1.0)
LOG_B_NODES = tuple(np.linspace(np.log(0.15), np.log(10.0), 9))
HALF_L_NODES = (10.0, 15.0, 20.0, 25.0)
LOG1P_N_NODES = tuple(np.linspace(np.log1p(25.0), np.log1p(1500.0), 24))
D_NODES = tuple(np.arange(2.0, 68.01, 1.0))
#: the grid of booster outputs the inverse is tabulated on (nm)
F_NODES = np.arange(-10.0, 90.001, 0.25)

#: instrument codes (see :meth:`Deshrink.codes`): v0 in steps of 0.01 of log(1.0051 - v0), b of 0.01 in
#: log b, L/2 of 0.5 nm; tolerance tables are shared by codes ``_TOL_COARSER`` times coarser in v0 and b
_V0_OFFSET, _V0_STEPS, _B_STEPS, _L_STEPS, _TOL_COARSER = 1.0051, 100.0, 100.0, 2.0, 5


def _key(v0: float, background: float, half_l: float) -> tuple[int, int, int]:
    """The code of one instrument (Python floats: the hot path's one-instrument packet)."""
    return (round(math.log(_V0_OFFSET - min(v0, 1.0)) * _V0_STEPS), round(math.log(max(background, 1e-3)) * _B_STEPS),
            round(half_l * _L_STEPS))


def _instrument(c0: int, c1: int, c2: int, coarser: int = 1) -> tuple[float, float, float]:
    """(v0, b, L/2) at the centre of a code (``coarser``: of a code ``coarser`` times coarser in v0 and b)."""
    return (min(_V0_OFFSET - math.exp(c0 * coarser / _V0_STEPS), 1.0), math.exp(c1 * coarser / _B_STEPS),
            c2 / _L_STEPS)


def _lru_put(cache: OrderedDict, key, value, size: int) -> None:
    cache[key] = value
    if len(cache) > size:
        cache.popitem(last=False)


def v0_coordinate(v0):
    """u = log(1.0001 - v0), the table's v0 axis (v0 above 1 counts as 1)."""
    return np.log(1.0001 - np.minimum(np.asarray(v0, np.float64), 1.0))


def response_inputs(d, v0, background, photons, half_l) -> np.ndarray:
    """(n, 5) float32 inputs of the response booster: d, u(v0), log b, log1p N, L/2."""
    return np.column_stack([np.asarray(d, np.float64), v0_coordinate(v0), np.log(np.asarray(background, np.float64)),
                            np.log1p(np.asarray(photons, np.float64)), np.asarray(half_l, np.float64)]).astype(np.float32)


# --------------------------------------------------------------------------- training


def manifest_entry(keep: float, info: dict) -> dict:
    """The bundle manifest's ``deshrink`` entry."""
    return {"file": FILE, "keep": keep, **info,
            "method": "inverse response curve per instrument and photon count, soft-thresholded at "
                      "keep x max(1 nm, 0.1 CRB)"}


def fit_table(raw_of, simulate, space, n_rulers: int, seed: int, nthread: int = 2, log=print,
              chunk: int = 1_500_000) -> dict:
    """Simulate ``n_rulers`` single-tuple rulers over ``space`` (``simulate(n, tuples_per_ruler,
    seed, space)`` -> :class:`Recording`, i.e. :func:`.general.simulate_general`), predict them with
    ``raw_of(rec)`` (the point booster's output with the true instrument), learn the response
    d_hat - d on (d, instrument, N) and tabulate it. Returns the arrays of ``deshrink.npz`` plus
    ``_info`` (what the manifest records)."""
    import xgboost as xgb

    from .tuples import half_l_of

    t0 = time.perf_counter()
    # the response is conditional on the instrument, so its design need not be the point booster's:
    # more rulers at v0 -> 1, down to 1 - 1e-5, where d_hat moves ~1 nm per 5e-4 of v0
    design = dataclasses.replace(space, v0_near_one_fraction=max(space.v0_near_one_fraction, 0.5),
                                 v0_gap_range=(min(1e-5, space.v0_gap_range[0]), space.v0_gap_range[1]))
    xs, zs = [], []
    for i, s in enumerate(range(0, n_rulers, chunk)):
        rec = simulate(min(chunk, n_rulers - s), 1, seed + i, design)
        t, tr = rec.tuples, rec.truth
        xs.append(response_inputs(tr["d_nm"], tr["v0"], tr["background"], t.photons, half_l_of(t.positions)))
        zs.append((np.asarray(raw_of(rec), np.float64) - tr["d_nm"]).astype(np.float32))
    X, z = np.concatenate(xs), np.concatenate(zs)
    log(f"[deshrink] {len(z):,} simulated rulers; {time.perf_counter() - t0:.0f} s")
    va = np.random.default_rng(seed).random(len(z)) < 0.1  # one tuple per ruler: a split by tuple is by ruler
    params = {"max_depth": 10, "eta": 0.05, "min_child_weight": 1000.0, "objective": "reg:squarederror",
              "tree_method": "hist", "max_bin": 256, "nthread": nthread, "seed": seed}
    dtr = xgb.QuantileDMatrix(X[~va], z[~va], max_bin=256)
    booster = xgb.train(params, dtr, 1500, evals=[(xgb.DMatrix(X[va], z[va]), "va")], early_stopping_rounds=60,
                        verbose_eval=False)
    trees = booster.best_iteration + 1
    log(f"[deshrink] response booster: {trees} trees depth 10; {time.perf_counter() - t0:.0f} s")
    grids = np.meshgrid(V0_NODES, LOG_B_NODES, HALF_L_NODES, LOG1P_N_NODES, D_NODES, indexing="ij")
    v0g, lbg, hlg, lng, dg = (g.ravel() for g in grids)
    Xg = response_inputs(dg, v0g, np.exp(lbg), np.expm1(lng), hlg)
    resid = booster.predict(xgb.DMatrix(Xg), iteration_range=(0, trees)).reshape(grids[0].shape)
    return {"v0": np.asarray(V0_NODES), "log_b": np.asarray(LOG_B_NODES), "half_l": np.asarray(HALF_L_NODES),
            "log1p_n": np.asarray(LOG1P_N_NODES), "d": np.asarray(D_NODES), "resid": resid.astype(np.float16),
            "_info": {"rulers": int(n_rulers), "seed": int(seed), "trees": int(trees), "max_depth": 10,
                      "validation_rmse_nm": float(np.sqrt(np.mean((booster.predict(xgb.DMatrix(X[va]),
                                                                   iteration_range=(0, trees)) - z[va]) ** 2))),
                      "seconds": round(time.perf_counter() - t0, 1)}}


# --------------------------------------------------------------------------- run time


def _crb_table(v0: float, b: float, half_l: float, log1p_n: np.ndarray, d: np.ndarray, n_theta: int = 2) -> np.ndarray:
    """(K, J) RMS over orientation of the per-tuple CRB at the nodes (pair centred on the pattern).

    Computed on every 3rd photon node and every 4th distance node and interpolated (in log CRB) to
    the rest: the tolerance needs ~10 %, and a new instrument (a live calibration moving) then costs
    ~2 ms instead of ~20."""
    from . import physics
    from .crb import crb_distance

    ln_c = np.unique(np.r_[log1p_n[::3], log1p_n[-1]])
    d_c = np.unique(np.r_[d[::4], d[-1]])
    th = (np.arange(n_theta) + 0.5) * np.pi / n_theta
    dd, nn, tt = (g.ravel() for g in np.meshgrid(d_c, np.expm1(ln_c), th, indexing="ij"))
    n = len(dd)
    pos = physics.beam_positions(np.zeros((n, 2)), np.full(n, half_l))
    sep = np.stack([dd * np.cos(tt), dd * np.sin(tt)], 1)
    unit = physics.expected_counts(pos, -sep / 2, sep / 2, 1.0, 1.0, 1.0, physics.a_from_v0(v0), 0.0)
    amp = np.clip(nn - 6.0 * b, 0.5, None) / unit.sum(axis=(1, 2))
    c = crb_distance(dd, tt, amp, np.zeros((n, 2)), pos, b, v0).reshape(len(d_c), len(ln_c), n_theta)
    log_c = 0.5 * np.log(np.mean(c ** 2, axis=2)).T  # (K_c, J_c)
    rows = np.stack([np.interp(d, d_c, r) for r in log_c])  # (K_c, J)
    return np.exp(np.stack([np.interp(log1p_n, ln_c, col) for col in rows.T], axis=1))


def _axis_position(x: float, nodes: np.ndarray) -> tuple[int, float]:
    """Lower node index and weight of the upper one (clamped to the nodes) of ``x`` on ``nodes``."""
    p = min(max(float(np.interp(x, nodes, np.arange(len(nodes), dtype=np.float64))), 0.0), len(nodes) - 1.000001)
    return int(p), p - int(p)


class _Uniform:
    """A uniformly spaced axis: first node, 1 / spacing, number of nodes."""

    def __init__(self, nodes: np.ndarray):
        nodes = np.asarray(nodes, np.float64)
        step = np.diff(nodes)
        if not np.allclose(step, step[0], rtol=1e-6, atol=1e-9):
            raise ValueError("deshrink table: run-time axes must be uniformly spaced")
        self.x0, self.inv, self.n = float(nodes[0]), float(1.0 / step[0]), len(nodes)


@jit
def _position(x, x0, inv, n):
    p = min(max((x - x0) * inv, 0.0), n - 1.0001)
    k = int(p)
    return k, p - k


@jit
def _soft_inverse(raw, log1p_n, inverse, keep_tol, n0, ninv, nn, f0, finv, nf, d0, dinv, nd):
    """Per tuple: the fully de-shrunk distance (bilinear in the (photons, booster output) inverse
    table), then the correction shortened by keep x tolerance (bilinear in (photons, distance))."""
    out = np.empty(raw.shape[0], np.float32)
    for i in range(raw.shape[0]):
        r = raw[i]
        k, wk = _position(log1p_n[i], n0, ninv, nn)
        j, wj = _position(r, f0, finv, nf)
        a = k * nf + j
        top = inverse[a] + wj * (inverse[a + 1] - inverse[a])
        full = top + wk * (inverse[a + nf] + wj * (inverse[a + nf + 1] - inverse[a + nf]) - top)
        j, wj = _position(full, d0, dinv, nd)
        a = k * nd + j
        top = keep_tol[a] + wj * (keep_tol[a + 1] - keep_tol[a])
        tol = top + wk * (keep_tol[a + nd] + wj * (keep_tol[a + nd + 1] - keep_tol[a + nd]) - top)
        delta = full - r
        step = abs(delta) - tol
        est = r + (step if delta > 0 else -step) if step > 0 else r
        out[i] = max(est, 0.0)
    return out


class Deshrink:
    """The shipped response table; per instrument (quantised, cached) the inverse and tolerance tables."""

    def __init__(self, arrays, keep: float, cache: int = 256):
        # u falls as v0 rises: the table's v0 axis reversed, so that u increases along it (np.interp)
        self.v0_u = v0_coordinate(np.asarray(arrays["v0"], np.float64))[::-1]
        self.log_b = np.asarray(arrays["log_b"], np.float64)
        self.half_l = np.asarray(arrays["half_l"], np.float64)
        self.log1p_n = np.asarray(arrays["log1p_n"], np.float64)
        self.d = np.asarray(arrays["d"], np.float64)
        self.resid = np.ascontiguousarray(np.asarray(arrays["resid"], np.float32)[::-1])
        for name, nodes in (("v0", self.v0_u), ("log_b", self.log_b), ("half_l", self.half_l),
                            ("log1p_n", self.log1p_n), ("d", self.d)):
            if not np.all(np.diff(nodes) > 0):
                raise ValueError(f"deshrink table: the {name} nodes are not strictly ordered")
        self.keep = np.float32(keep)
        self._n_axis, self._f_axis, self._d_axis = _Uniform(self.log1p_n), _Uniform(F_NODES), _Uniform(self.d)
        self._cache: OrderedDict = OrderedDict()
        self._tol: OrderedDict = OrderedDict()
        self._size = cache

    @staticmethod
    def codes(v0: np.ndarray, background: np.ndarray, half_l: np.ndarray) -> np.ndarray:
        """(n, 3) int64 instrument codes; instruments of one code share their tables: v0 within
        0.01 x (1.0051 - v0), i.e. 1 % of 1 - v0 down to 5e-5 near v0 = 1 (where d_hat moves ~1 nm
        per 5e-4 of v0, and a live v0 estimate near 1 would otherwise visit a new code per
        packet), b within 1 %, L/2 within 0.5 nm."""
        return np.column_stack([
            np.round(np.log(_V0_OFFSET - np.minimum(np.asarray(v0, np.float64), 1.0)) * _V0_STEPS),
            np.round(np.log(np.maximum(np.asarray(background, np.float64), 1e-3)) * _B_STEPS),
            np.round(np.asarray(half_l, np.float64) * _L_STEPS)]).astype(np.int64)

    def tables(self, key: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(inverse (K, F): d at each booster output node, keep x tolerance (K, J)), both raveled, of one
        instrument code."""
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        v0, b, hl = _instrument(*key)
        curve = np.zeros((len(self.log1p_n), len(self.d)), np.float64)
        # multilinear in (u(v0), log b, L/2) over the 8 surrounding nodes
        axes = [(self.v0_u, float(v0_coordinate(v0))), (self.log_b, math.log(b)), (self.half_l, hl)]
        pos = [_axis_position(x, nodes) for nodes, x in axes]
        for corner in range(8):
            idx, w = [], 1.0
            for a, (k, wk) in enumerate(pos):
                up = (corner >> a) & 1
                idx.append(k + up)
                w *= wk if up else 1.0 - wk
            if w > 0:
                curve += w * self.resid[idx[0], idx[1], idx[2]]
        m = np.maximum.accumulate(curve + self.d[None, :], axis=1) + np.arange(len(self.d)) * 1e-6
        inverse = np.stack([np.interp(F_NODES, row, self.d) for row in m]).astype(np.float32).ravel()
        # the tolerance needs ~10 %: shared by instruments 5x coarser in v0 and b (a CRB table costs ~2 ms)
        tkey = (round(key[0] / _TOL_COARSER), round(key[1] / _TOL_COARSER), key[2])
        tol = self._tol.get(tkey)
        if tol is None:
            tv0, tb, _ = _instrument(*tkey, coarser=_TOL_COARSER)
            tol = (self.keep * np.maximum(1.0, 0.1 * _crb_table(tv0, tb, hl, self.log1p_n, self.d))).astype(np.float32).ravel()
            _lru_put(self._tol, tkey, tol, self._size)
        _lru_put(self._cache, key, (inverse, tol), self._size)
        return inverse, tol

    def _apply_one(self, raw: np.ndarray, log1p_n: np.ndarray, key) -> np.ndarray:
        inverse, keep_tol = self.tables(key)
        a, f, d = self._n_axis, self._f_axis, self._d_axis
        return _soft_inverse(np.ascontiguousarray(raw, np.float32), np.ascontiguousarray(log1p_n, np.float32),
                             inverse, keep_tol, a.x0, a.inv, a.n, f.x0, f.inv, f.n, d.x0, d.inv, d.n)

    def apply(self, raw: np.ndarray, log1p_n: np.ndarray, v0: np.ndarray, background: np.ndarray,
              half_l: np.ndarray) -> np.ndarray:
        """De-shrunk distances (float32); instrument arrays (n,) per tuple (one group per instrument)."""
        raw = np.asarray(raw, np.float32)
        if len(raw) == 0:
            return raw.copy()
        if v0.strides == (0,) and background.strides == (0,) and half_l.max() - half_l.min() < 0.25:
            # one instrument (a broadcast scalar): its key from Python floats, no per-tuple work
            return self._apply_one(raw, log1p_n, _key(float(v0[0]), float(background[0]), float(half_l[0])))
        uniq, inv = np.unique(self.codes(v0, background, half_l), axis=0, return_inverse=True)
        out = np.empty_like(raw)
        for g, key in enumerate(uniq):
            sel = inv.reshape(-1) == g
            out[sel] = self._apply_one(raw[sel], log1p_n[sel], tuple(int(x) for x in key))
        return out

