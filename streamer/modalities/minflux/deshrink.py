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

Inverting the mean response does not make the de-shrunk output unbiased where the posterior mean
is spread widely and the inverse is curved (E[m^-1(d_hat)] != d: v0 = 1 at 35-55 nm read +1 to +2.5
nm). So later stages (``resid2``, ``resid3``, ..., optional) each learn the response of the output
so far the same way, m_k(d) = E[output of stages < k | d, instrument, N], and invert that,
soft-thresholded at their own ``keep``: an iterated bias correction toward E[output | d] = d. Their
rulers draw their instruments from a pool of instrument-code centres, so that the earlier stages
they are scored with are exactly the ones served (their tables are per code). Chosen on the
development grid (cells meeting all three criteria of 90): stage 1 alone 69; stage 2 at keep
0 / 0.3 / 0.5: 61 / 72 / 72 (RMSE in 85 / 89 / 90; 74 at 0.5 with the intervals shipped since);
stage 3 on stage 2 at 0.5, keep 0 / 0.3 / 0.5 / 0.7: 69 / 77 / 79 / 76 (RMSE in 83 / 89 / 90 / 90);
stage 4 on stage 3 at 0.5, keep 0 / 0.3 / 0.5 / 0.7: 71 / 78 / 82 / 81 (RMSE in 83 / 88 / 89 / 89);
a fifth stage met 83 at best (not shipped). The recipe learns stages 1-4 (keeps 0.7, 0.5, 0.5,
0.5) for bundles that serve them (trained for a profile); the shipped bundle served them until the
eleventh session and now keeps stage 1 (its table's nodes) with the deconvolution below. Per
instrument all stages are folded into one table over (photons, booster output): one bilinear
lookup per tuple.

A bundle whose manifest records a ``deconvolution`` serves instead the maps T(booster output) of
:mod:`.deconvolution`, solved per node for the bias directly (``deconv`` in the same file): per
instrument they are interpolated between the nodes like the responses, and read by the same lookup.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import Sequence

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
    """The bundle manifest's ``deshrink`` entry (first stage; :func:`fit_later_stage` adds ``stage2``, ...)."""
    return {"file": FILE, "keep": keep, **info,
            "method": "inverse response curve per instrument and photon count, soft-thresholded at "
                      "keep x max(1 nm, 0.1 CRB)"}


def later_keeps(entry: dict) -> list[float]:
    """The keeps of the later stages a manifest's ``deshrink`` entry records (``stage2``, ``stage3``, ... in order)."""
    keeps, k = [], 2
    while f"stage{k}" in entry:
        keeps.append(float(entry[f"stage{k}"][f"keep{k}"]))
        k += 1
    return keeps


def table_arrays(resid: np.ndarray) -> dict:
    """The arrays of ``deshrink.npz`` for a tabulated first-stage response ``resid`` (the node axes)."""
    return {"v0": np.asarray(V0_NODES), "log_b": np.asarray(LOG_B_NODES), "half_l": np.asarray(HALF_L_NODES),
            "log1p_n": np.asarray(LOG1P_N_NODES), "d": np.asarray(D_NODES), "resid": resid.astype(np.float16)}


def _fit_response(X: np.ndarray, z: np.ndarray, seed: int, nthread: int, log, t0: float) -> tuple[np.ndarray, dict]:
    """Booster of the response z = output - d on the inputs X (:func:`response_inputs`), tabulated on
    the table's nodes; returns (resid float16, what the manifest records)."""
    import xgboost as xgb

    # one tuple per ruler: a split by tuple is by ruler. Its own stream: default_rng(seed) drew the first
    # chunk's distances (the table shipped before the eighth session of 2026-11-30 held out that
    # chunk's rulers below 8.6 nm this way)
    va = np.random.default_rng([seed, 1]).random(len(z)) < 0.1
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
    rmse = float(np.sqrt(np.mean((booster.predict(xgb.DMatrix(X[va]), iteration_range=(0, trees)) - z[va]) ** 2)))
    return resid.astype(np.float16), {"rulers": int(len(z)), "seed": int(seed), "trees": int(trees), "max_depth": 10,
                                      "validation_rmse_nm": rmse, "seconds": round(time.perf_counter() - t0, 1)}


def response_design(space):
    """The rulers a response is learned on: the training space, with more of them at v0 -> 1, down to
    1 - 1e-5, where d_hat moves ~1 nm per 5e-4 of v0 (the response is conditional on the instrument, so
    its design need not be the point booster's)."""
    return dataclasses.replace(space, v0_near_one_fraction=max(space.v0_near_one_fraction, 0.5),
                               v0_gap_range=(min(1e-5, space.v0_gap_range[0]), space.v0_gap_range[1]))


def fit_table(raw_of, simulate, space, n_rulers: int, seed: int, nthread: int = 2, log=print,
              chunk: int = 1_500_000) -> dict:
    """Simulate ``n_rulers`` single-tuple rulers over :func:`response_design` (``simulate(n,
    tuples_per_ruler, seed, space)`` -> :class:`Recording`, i.e. :func:`.general.simulate_general`),
    predict them with ``raw_of(rec)`` (the point booster's output with the true instrument), learn the
    response d_hat - d on (d, instrument, N) and tabulate it. Returns the arrays of ``deshrink.npz``
    plus ``_info`` (what the manifest records)."""
    from .tuples import half_l_of

    t0 = time.perf_counter()
    design = response_design(space)
    xs, zs = [], []
    for i, s in enumerate(range(0, n_rulers, chunk)):
        rec = simulate(min(chunk, n_rulers - s), 1, seed + i, design)
        t, tr = rec.tuples, rec.truth
        xs.append(response_inputs(tr["d_nm"], tr["v0"], tr["background"], t.photons, half_l_of(t.positions)))
        zs.append((np.asarray(raw_of(rec), np.float64) - tr["d_nm"]).astype(np.float32))
    X, z = np.concatenate(xs), np.concatenate(zs)
    log(f"[deshrink] {len(z):,} simulated rulers; {time.perf_counter() - t0:.0f} s")
    resid, info = _fit_response(X, z, seed, nthread, log, t0)
    return {**table_arrays(resid), "_info": info}


def fit_later_stage(raw_of, simulate, draw_instruments, space, arrays: dict, keep: float, later: list[float],
                    new_keep: float, n_rulers: int, seed: int, pool: int = 20_000, nthread: int = 2, log=print,
                    chunk: int = 1_000_000) -> dict:
    """The next stage (k = len(later) + 2) for a table ``arrays`` served with ``keep`` and the earlier
    later stages' ``later`` keeps: ``n_rulers`` rulers over :func:`response_design` whose instruments
    come from ``pool`` instrument-code centres (``draw_instruments(n, rng, space)`` -> (v0, b, L/2);
    ``simulate(n, 1, seed, space, instruments=(v0, b, L/2) per ruler)``), scored with the stages so
    far as served, their response learned and tabulated. Returns ``arrays`` plus ``resid<k>`` and
    ``_info`` (what the manifest records as ``stage<k>``)."""
    from .tuples import half_l_of

    t0 = time.perf_counter()
    k_stage = len(later) + 2
    design = response_design(space)
    rng = np.random.default_rng(seed)
    codes = Deshrink.codes(*draw_instruments(pool, rng, design))
    centres = np.array([_instrument(*(int(c) for c in code)) for code in codes])
    so_far = Deshrink(arrays, keep, later)
    # rulers sorted by instrument, so each chunk covers a run of the pool and each instrument's
    # tables are built once (the per-code cache holds a few hundred)
    k_all = np.sort(rng.integers(0, pool, n_rulers))
    xs, zs = [], []
    for i, s in enumerate(range(0, n_rulers, chunk)):
        k = k_all[s:s + chunk]
        r = len(k)
        rec = simulate(r, 1, seed + 1 + i, design, instruments=tuple(centres[k].T))
        t, tr = rec.tuples, rec.truth
        raw = np.asarray(raw_of(rec), np.float32)
        log1p_n = np.log1p(t.photons.astype(np.float32))
        est = np.empty_like(raw)
        bounds = np.r_[0, np.flatnonzero(np.diff(k)) + 1, r]
        for a, b in zip(bounds[:-1], bounds[1:]):
            est[a:b] = so_far.apply_code(raw[a:b], log1p_n[a:b], tuple(int(c) for c in codes[k[a]]))
        xs.append(response_inputs(tr["d_nm"], tr["v0"], tr["background"], t.photons, half_l_of(t.positions)))
        zs.append((est - tr["d_nm"]).astype(np.float32))
    X, z = np.concatenate(xs), np.concatenate(zs)
    log(f"[deshrink] stage {k_stage}: {len(z):,} simulated rulers on {pool:,} instruments; {time.perf_counter() - t0:.0f} s")
    resid, info = _fit_response(X, z, seed, nthread, log, t0)
    return {**{name: v for name, v in arrays.items() if not name.startswith("_")}, f"resid{k_stage}": resid,
            "_info": {**info, "instrument_pool": int(pool), f"keep{k_stage}": float(new_keep),
                      "method": f"inverse response curve of the output of stages 1-{k_stage - 1}, soft-thresholded "
                                f"at keep{k_stage} x max(1 nm, 0.1 CRB)"}}


# --------------------------------------------------------------------------- run time


def crb_table(v0: float, b: float, half_l: float, log1p_n: np.ndarray, d: np.ndarray, n_theta: int = 2) -> np.ndarray:
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
def _lookup(raw, log1p_n, table, n0, ninv, nn, f0, finv, nf):
    """Per tuple: the instrument's folded table, bilinear in (photons, booster output), clipped at 0."""
    out = np.empty(raw.shape[0], np.float32)
    for i in range(raw.shape[0]):
        k, wk = _position(log1p_n[i], n0, ninv, nn)
        j, wj = _position(raw[i], f0, finv, nf)
        a = k * nf + j
        top = table[a] + wj * (table[a + 1] - table[a])
        est = top + wk * (table[a + nf] + wj * (table[a + nf + 1] - table[a + nf]) - top)
        out[i] = max(est, 0.0)
    return out


@jit
def _interp_rows(x, xp, fp):
    """``np.interp(x[k], xp[k], fp[k])`` for every row k: x (K, F), xp (K, J) increasing, fp (K, J).
    One compiled pass instead of a Python loop of np.interp per photon node and stage (a new
    instrument code builds its table on the live path)."""
    K, F = x.shape
    J = xp.shape[1]
    out = np.empty((K, F))
    for k in range(K):
        for i in range(F):
            v = x[k, i]
            if v <= xp[k, 0]:
                out[k, i] = fp[k, 0]
            elif v >= xp[k, J - 1]:
                out[k, i] = fp[k, J - 1]
            else:
                lo, hi = 0, J - 1  # xp[k, lo] < v < xp[k, hi]
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if xp[k, mid] <= v:
                        lo = mid
                    else:
                        hi = mid
                w = (v - xp[k, lo]) / (xp[k, hi] - xp[k, lo])
                out[k, i] = fp[k, lo] + w * (fp[k, hi] - fp[k, lo])
    return out


def _rows(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``a`` as a C-contiguous float64 (K, n) array (a shared row repeated), for :func:`_interp_rows`."""
    return np.ascontiguousarray(np.broadcast_to(np.asarray(a, np.float64), shape))


def _inverse_rows(resid: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(K, J) response (minus d) -> (K, J) monotone mean output m(d) (ties broken upward, so np.interp
    with m as abscissa inverts it)."""
    return np.maximum.accumulate(resid + d[None, :], axis=1) + np.arange(len(d)) * 1e-6


def _soft_step(x: np.ndarray, full: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """x moved toward ``full`` by the part of the correction beyond ``tol``."""
    delta = full - x
    return x + np.sign(delta) * np.maximum(np.abs(delta) - tol, 0.0)


class Deshrink:
    """The shipped response table(s); per instrument (quantised, cached) the folded table."""

    def __init__(self, arrays, keep: float, later: Sequence[float] = (), cache: int = 256,
                 deconvolution: bool = False):
        """``later``: the keeps of stages 2, 3, ... (their tables ``resid2``, ``resid3``, ... must be in
        ``arrays``); tables of stages without a keep are not used (a bundle's manifest lists its stages).
        ``deconvolution``: serve the per-instrument maps T (``deconv`` on the nodes ``deconv_x``, see
        :mod:`.deconvolution`) instead of the stages' folded table."""
        # u falls as v0 rises: the table's v0 axis reversed, so that u increases along it (np.interp)
        self.v0_u = v0_coordinate(np.asarray(arrays["v0"], np.float64))[::-1]
        self.log_b = np.asarray(arrays["log_b"], np.float64)
        self.half_l = np.asarray(arrays["half_l"], np.float64)
        self.log1p_n = np.asarray(arrays["log1p_n"], np.float64)
        self.d = np.asarray(arrays["d"], np.float64)
        self.resid = np.ascontiguousarray(np.asarray(arrays["resid"], np.float32)[::-1])
        names = [f"resid{k}" for k in range(2, len(later) + 2)]
        missing = [n for n in names if n not in arrays]
        if missing:
            raise ValueError(f"deshrink table: {len(later)} later stages asked for, {', '.join(missing)} missing")
        #: (response table, keep) of each later stage, in order
        self.stages = [(np.ascontiguousarray(np.asarray(arrays[n], np.float32)[::-1]), float(k))
                       for n, k in zip(names, later)]
        for name, nodes in (("v0", self.v0_u), ("log_b", self.log_b), ("half_l", self.half_l),
                            ("log1p_n", self.log1p_n), ("d", self.d)):
            if not np.all(np.diff(nodes) > 0):
                raise ValueError(f"deshrink table: the {name} nodes are not strictly ordered")
        shape = (len(self.v0_u), len(self.log_b), len(self.half_l), len(self.log1p_n), len(self.d))
        for name, r in [("resid", self.resid)] + [(n, r) for n, (r, _) in zip(names, self.stages)]:
            if r.shape != shape:
                raise ValueError(f"deshrink table: {name} has shape {r.shape}, not that of the nodes")
        self.keep = float(keep)
        self._n_axis, self._f_axis = _Uniform(self.log1p_n), _Uniform(F_NODES)
        self.deconv = None
        if deconvolution:
            if "deconv" not in arrays or "deconv_x" not in arrays:
                raise ValueError("deshrink table: the deconvolution asked for, its deconv / deconv_x missing")
            x = np.asarray(arrays["deconv_x"], np.float64)
            self.deconv = np.ascontiguousarray(np.asarray(arrays["deconv"], np.float32)[::-1])
            if self.deconv.shape != shape[:4] + (len(x),):
                raise ValueError(f"deshrink table: deconv has shape {self.deconv.shape}, not that of the nodes")
            self._f_axis = _Uniform(x)
        # the distance and booster-output nodes as (photon node, node) rows, once: every table build reads them
        self._d_rows = _rows(self.d, (len(self.log1p_n), len(self.d)))
        self._f_rows = _rows(F_NODES, (len(self.log1p_n), len(F_NODES)))
        self._cache: OrderedDict = OrderedDict()
        self._floor: OrderedDict = OrderedDict()
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

    def _curve(self, resid: np.ndarray, v0: float, b: float, hl: float) -> np.ndarray:
        """(K, J) response (or map T) of one instrument: multilinear in (u(v0), log b, L/2) over the 8
        surrounding nodes."""
        curve = np.zeros(resid.shape[3:], np.float64)
        axes = [(self.v0_u, float(v0_coordinate(v0))), (self.log_b, math.log(b)), (self.half_l, hl)]
        pos = [_axis_position(x, nodes) for nodes, x in axes]
        for corner in range(8):
            idx, w = [], 1.0
            for a, (k, wk) in enumerate(pos):
                up = (corner >> a) & 1
                idx.append(k + up)
                w *= wk if up else 1.0 - wk
            if w > 0:
                curve += w * resid[idx[0], idx[1], idx[2]]
        return curve

    def _tolerance_floor(self, key: tuple[int, int, int]) -> np.ndarray:
        """(K, J) max(1 nm, 0.1 CRB); needs ~10 %, so shared by instruments 5x coarser in v0 and b
        (a CRB table costs ~2 ms)."""
        tkey = (round(key[0] / _TOL_COARSER), round(key[1] / _TOL_COARSER), key[2])
        floor = self._floor.get(tkey)
        if floor is None:
            tv0, tb, hl = _instrument(*tkey, coarser=_TOL_COARSER)
            floor = np.ascontiguousarray(np.maximum(1.0, 0.1 * crb_table(tv0, tb, hl, self.log1p_n, self.d)))
            _lru_put(self._floor, tkey, floor, self._size)
        return floor

    def table(self, key: tuple[int, int, int]) -> np.ndarray:
        """(K, F) raveled float32: the de-shrunk distance at each (photon node, booster output node) of
        one instrument code, all stages folded in (or the deconvolution's map)."""
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        v0, b, hl = _instrument(*key)
        if self.deconv is not None:
            out = self._curve(self.deconv, v0, b, hl)
        else:
            floor = self._tolerance_floor(key)
            out = self._f_rows
            for resid, keep in [(self.resid, self.keep)] + self.stages:
                m = _inverse_rows(self._curve(resid, v0, b, hl), self.d)
                full = _interp_rows(out, m, self._d_rows)
                out = _soft_step(out, full, keep * _interp_rows(full, self._d_rows, floor))
        folded = np.ascontiguousarray(out, np.float32).ravel()
        _lru_put(self._cache, key, folded, self._size)
        return folded

    def apply_code(self, raw: np.ndarray, log1p_n: np.ndarray, key: tuple[int, int, int]) -> np.ndarray:
        """De-shrunk distances (float32) of tuples measured on the instrument of code ``key``."""
        a, f = self._n_axis, self._f_axis
        return _lookup(np.ascontiguousarray(raw, np.float32), np.ascontiguousarray(log1p_n, np.float32),
                       self.table(key), a.x0, a.inv, a.n, f.x0, f.inv, f.n)

    def apply(self, raw: np.ndarray, log1p_n: np.ndarray, v0: np.ndarray, background: np.ndarray,
              half_l: np.ndarray) -> np.ndarray:
        """De-shrunk distances (float32); instrument arrays (n,) per tuple (one group per instrument)."""
        raw = np.asarray(raw, np.float32)
        if len(raw) == 0:
            return raw.copy()
        if v0.strides == (0,) and background.strides == (0,) and half_l.max() - half_l.min() < 0.25:
            # one instrument (a broadcast scalar): its key from Python floats, no per-tuple work
            return self.apply_code(raw, log1p_n, _key(float(v0[0]), float(background[0]), float(half_l[0])))
        uniq, inv = np.unique(self.codes(v0, background, half_l), axis=0, return_inverse=True)
        out = np.empty_like(raw)
        for g, key in enumerate(uniq):
            sel = inv.reshape(-1) == g
            out[sel] = self.apply_code(raw[sel], log1p_n[sel], tuple(int(x) for x in key))
        return out
