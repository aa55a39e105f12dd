"""Compiled per-packet steps of the live trace analysis (:mod:`.traces`, :mod:`.live`): the
per-tuple harmonic terms, the segmenter's window statistics, the confirmation of states, the
per-tuple sums of one state (2-on: per tuple, for the blocks; 1-on: summed once for the calibration
and the partials alike) and the pooled per-trace estimate.

Each step runs per trace and packet on a few hundred tuples, where numpy's per-call overhead, not
the arithmetic, was the cost (two dozen array calls per step). Each kernel does the float64 steps
of its numpy reference, sums along the tuples in the same order (the window statistics, states and
per-tuple and 1-on partial sums agree exactly; the per-trace estimate's jackknife mean and
Gauss-Hermite sum and v0's error sums may differ in the last bits: numpy sums those pairwise);
``tests/minflux/test_trace_kernels.py`` checks both. Without numba the references run.
"""

from __future__ import annotations

import numpy as np

from ...core.jit import HAVE_NUMBA, jit
from . import physics


def window_stats(a: np.ndarray, k: int, w: int, background: float, z_signal: float, z_first: float, seen: bool,
                 floor_z: float, edges: np.ndarray, hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trailing-window statistics of a trace's block ``a`` (k + m, 7) float64 (the k tail rows of
    the last packet, then this packet's m: P (2), Q (2), var(P)+var(Q) (2), total counts): per new
    row (``modulated``, ``level``), and ``hist`` (the trace's level histogram over ``edges``)
    counts the modulated windows' levels (in place). See :meth:`.traces.Segmenter.segment`."""
    if HAVE_NUMBA:
        return _window_stats(a, k, w, background, z_signal, z_first, seen, floor_z, edges, hist)
    return _window_stats_numpy(a, k, w, background, z_signal, z_first, seen, floor_z, edges, hist)


def _window_stats_numpy(a, k, w, background, z_signal, z_first, seen, floor_z, edges, hist):
    """Reference of :func:`_window_stats` (and the path without numba)."""
    # one running sum down all 7 columns; a window's sum is the difference of two of them
    cs = np.cumsum(a, axis=0)
    sums = cs.copy()
    sums[w:] = cs[w:] - cs[:-w]
    sP, sQ, sV, sN = sums[:, 0:2], sums[:, 2:4], sums[:, 4:6], sums[:, 6]
    cnt = np.minimum(np.arange(1, len(a) + 1), w)
    z = ((sP**2 + sQ**2) / np.maximum(sV, 1e-9)).sum(axis=1)[k:]
    level = (sN / cnt - 6.0 * background)[k:]
    floor = floor_z * np.sqrt(max(6.0 * background, 1.0) / cnt[k:])
    thr = z_signal * np.sqrt(cnt[k:] / w) if seen else z_first
    modulated = (z > thr) & (level > floor)
    hist += np.bincount(np.searchsorted(edges, level[modulated]), minlength=len(hist))
    return modulated, level


@jit
def _window_stats(a, k, w, background, z_signal, z_first, seen, floor_z, edges, hist):  # pragma: no cover - compiled
    n = a.shape[0]
    cs = np.empty_like(a)
    acc = np.zeros(a.shape[1])
    for i in range(n):  # np.cumsum(axis=0): sequential down each column
        for c in range(a.shape[1]):
            acc[c] += a[i, c]
            cs[i, c] = acc[c]
    m = n - k
    modulated = np.zeros(m, np.bool_)
    level = np.empty(m)
    floor_num = max(6.0 * background, 1.0)
    bg6 = 6.0 * background
    for i in range(k, n):
        z = 0.0
        for ax in range(2):
            sp, sq, sv = cs[i, ax], cs[i, 2 + ax], cs[i, 4 + ax]
            if i >= w:
                sp, sq, sv = sp - cs[i - w, ax], sq - cs[i - w, 2 + ax], sv - cs[i - w, 4 + ax]
            z += (sp * sp + sq * sq) / max(sv, 1e-9)
        sn = cs[i, 6] - cs[i - w, 6] if i >= w else cs[i, 6]
        cnt = min(i + 1, w)
        lv = sn / cnt - bg6
        level[i - k] = lv
        thr = z_signal * np.sqrt(cnt / w) if seen else z_first
        if z > thr and lv > floor_z * np.sqrt(floor_num / cnt):
            modulated[i - k] = True
            hist[np.searchsorted(edges, lv)] += 1
    return modulated, level


def confirmed_states(states: np.ndarray, start: int, stop: int, w: int, unknown: int) -> np.ndarray:
    """(stop - start,) uint8: each tuple's state where its whole neighbourhood (``w`` tuples before,
    clipped at the trace's start, and ``w`` after) has that state, else ``unknown``."""
    if HAVE_NUMBA:
        return _confirmed_states(states, start, stop, w, unknown)
    return _confirmed_states_numpy(states, start, stop, w, unknown)


def _confirmed_states_numpy(states, start, stop, w, unknown):
    """Reference of :func:`_confirmed_states`."""
    idx = np.arange(start, stop)
    lo = np.maximum(idx - w, 0)
    out = np.full(len(idx), unknown, np.uint8)
    for s in np.unique(states):
        bad = np.concatenate([[0], np.cumsum(states != s)])
        out[(bad[idx + w + 1] - bad[lo]) == 0] = s
    return out


@jit
def _confirmed_states(states, start, stop, w, unknown):  # pragma: no cover - compiled
    n = states.shape[0]
    run_start = np.empty(n, np.int64)  # first index of the run of equal states holding each tuple
    run_end = np.empty(n, np.int64)  # last index
    for i in range(n):
        run_start[i] = run_start[i - 1] if i and states[i] == states[i - 1] else i
    for i in range(n - 1, -1, -1):
        run_end[i] = run_end[i + 1] if i < n - 1 and states[i] == states[i + 1] else i
    out = np.full(stop - start, unknown, np.uint8)
    for i in range(start, stop):
        if run_start[i] <= max(i - w, 0) and run_end[i] >= i + w:
            out[i - start] = states[i]
    return out


def sum_rows(terms: np.ndarray) -> np.ndarray:
    """(k, 2, 6) float64 per-tuple summands from harmonic terms (k, 6, 2) = P, Q, m0, var_pq, var_m0,
    var_q: per axis P^2 + Q^2 - var PQ, m0, m0^2, var m0, P, Q^2 - var Q (what TraceDistance and the
    partials sum); from (k, 5, 2) terms (no var_q) the first four only."""
    t = np.asarray(terms, np.float64)
    P, Q, m0, vpq, vm0 = (t[:, j] for j in range(5))
    cols = [P * P + Q * Q - vpq, m0, m0 * m0, vm0]
    if t.shape[1] > 5:
        cols += [P, Q * Q - t[:, 5]]
    return np.stack(cols, axis=-1)


def rows_where(terms: np.ndarray, states: np.ndarray, state: int) -> np.ndarray:
    """:func:`.traces.sum_rows` of the tuples in ``state`` (``terms[states == state]``), in one pass."""
    if HAVE_NUMBA and terms.ndim == 3 and terms.shape[1:] == (6, 2):
        return _rows_where(terms, states, state)
    return sum_rows(terms[states == state])


@jit
def _rows_where(terms, states, state):  # pragma: no cover - compiled; sum_rows' float64 steps
    n = 0
    for i in range(states.shape[0]):
        n += states[i] == state
    out = np.empty((n, 2, 6))
    j = 0
    for i in range(states.shape[0]):
        if states[i] != state:
            continue
        for ax in range(2):
            p, q, m0 = np.float64(terms[i, 0, ax]), np.float64(terms[i, 1, ax]), np.float64(terms[i, 2, ax])
            out[j, ax, 0] = p * p + q * q - np.float64(terms[i, 3, ax])
            out[j, ax, 1] = m0
            out[j, ax, 2] = m0 * m0
            out[j, ax, 3] = np.float64(terms[i, 4, ax])
            out[j, ax, 4] = p
            out[j, ax, 5] = q * q - np.float64(terms[i, 5, ax])
        j += 1
    return out


_SEP = 2.0 / physics.K_NM  # d_a = (2/K) arccos(sqrt(r_a)) (traces.squared_separation)
_SEP2 = _SEP**2


def pooled_estimate(blocks: np.ndarray, nb: np.ndarray, extra: np.ndarray, extra_n: float, v0: float, background: float,
                    v0_se: float, background_se: float, min_blocks: int, sys_nm: float, t95: np.ndarray,
                    gh_x: np.ndarray, gh_w: np.ndarray) -> tuple[float, float, float] | None:
    """:func:`.traces.estimate_from_blocks` compiled, for blocks with the v0 columns (k, 2, 6) that are
    finite; None otherwise (the caller's numpy path serves). ``t95``: the Student-t table,
    ``gh_x``/``gh_w``: the Gauss-Hermite nodes of :func:`.traces.expected_sqrt`."""
    if not HAVE_NUMBA or blocks.ndim != 3 or blocks.shape[1:] != (2, 6) or extra.shape != (2, 6):
        return None
    est, lo, hi, ok = _pooled_estimate(np.ascontiguousarray(blocks, np.float64), np.asarray(nb, np.float64),
                                       np.asarray(extra, np.float64), float(extra_n), float(v0), float(background),
                                       float(v0_se), float(background_se), int(min_blocks), float(sys_nm), t95,
                                       gh_x, gh_w)
    return (est, lo, hi) if ok else None


@jit
def _d2_of(s, n, v0, b):  # pragma: no cover - compiled; traces._d2's float64 steps, one (2, 6) sum
    out = 0.0
    for ax in range(2):
        s1, s2, sv = s[ax, 1], s[ax, 2], s[ax, 3]
        den = s2 - 2.0 * b * s1 + n * b * b - sv
        sp, sq, u = s[ax, 4], s[ax, 5], s1 - n * b
        corr = 2.0 * u * u * max(sq, 0.0) / (den if den > 0 else np.inf)
        v = (sp + np.sqrt(sp * sp + corr)) / (2.0 * (u if u > 0 else np.nan))
        if not sp > 0:
            v = np.nan
        r = (v * v if np.isfinite(v) else 0.0) / (v0 * v0)
        if r <= 1.0:
            a = _SEP * np.arccos(np.sqrt(max(r, 0.0)))
            out += a * a
        else:
            out += _SEP2 * (1.0 - r)
    return out


@jit
def _pooled_estimate(blocks, nb, extra, extra_n, v0, b, v0_se, b_se, min_blocks, sys_nm, t95, gh_x,
                     gh_w):  # pragma: no cover - compiled; traces.estimate_from_blocks' steps
    k = blocks.shape[0]
    full = np.zeros((2, 6))
    for i in range(k):  # blocks.sum(axis=0): sequential over blocks
        for ax in range(2):
            for c in range(6):
                full[ax, c] += blocks[i, ax, c]
    total = full + extra
    for ax in range(2):
        for c in range(4, 6):
            if not np.isfinite(total[ax, c]):
                return np.nan, np.nan, np.nan, False
    nb_sum = 0.0
    for i in range(k):
        nb_sum += nb[i]
    n_total = nb_sum + extra_n
    if n_total <= 0:
        return np.nan, np.nan, np.nan, True
    d2 = _d2_of(total, n_total, v0, b)
    if k < min_blocks:
        return np.sqrt(max(d2, 0.0)), np.nan, np.nan, True
    loo = np.empty(k)
    for i in range(k):  # the delete-one-block jackknife
        loo[i] = _d2_of(full - blocks[i], nb_sum - nb[i], v0, b)
    var = (k - 1) / k * np.sum((loo - np.mean(loo)) ** 2)
    cal2 = 0.0
    if v0_se > 0:
        cal2 += (0.5 * (_d2_of(total, n_total, v0 + v0_se, b) - _d2_of(total, n_total, v0 - v0_se, b))) ** 2
    if b_se > 0:
        cal2 += (0.5 * (_d2_of(total, n_total, v0, b + b_se) - _d2_of(total, n_total, v0, max(b - b_se, 0.0)))) ** 2
    sd = np.sqrt(var + cal2)
    plain = np.sqrt(max(d2, 0.0))
    est = plain
    if sd > 0:  # traces.debiased_sqrt
        e = 0.0
        for i in range(gh_x.shape[0]):
            e += np.sqrt(max(d2 + sd * gh_x[i], 0.0)) * gh_w[i]
        est = max(2.0 * plain - e, 0.0)
    t = t95[min(max(k - 1, 1), t95.shape[0]) - 1]
    half = np.sqrt(t * t * var + 1.6449**2 * cal2)
    lo = np.sqrt(max(d2 - half, 0.0))
    hi = np.sqrt(max(d2 + half, 0.0))
    if sys_nm:
        lo, hi = max(lo - 1.6449 * sys_nm, 0.0), hi + 1.6449 * sys_nm
    return est, lo, hi, True


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel with the types the live path gives them, so
    a worker's first packet does not wait for it (~3 s to compile, ~30 ms to load)."""
    if not HAVE_NUMBA:
        return
    harmonic_block(np.ones((1, 2, 3), np.uint16), np.array([[[-15.0, 0.0, 15.0]] * 2], np.float32))
    a = np.zeros((3, 7))
    window_stats(a, 1, 2, 1.0, 12.0, 24.0, False, 4.0, np.array([1.0, 2.0]), np.zeros(3, np.int64))
    confirmed_states(np.zeros(5, np.uint8), 0, 3, 2, 255)
    rows_where(np.zeros((2, 6, 2), np.float32), np.zeros(2, np.uint8), 2)
    one_sums(np.zeros((2, 6, 2), np.float32), np.zeros(2, np.uint8), 1, 1.0)
    pooled_estimate(np.zeros((1, 2, 6)), np.ones(1), np.zeros((2, 6)), 0.0, 0.9, 1.0, 0.0, 0.0, 4, 0.0,
                    np.ones(3), np.zeros(1), np.ones(1))


def one_sums(terms: np.ndarray, states: np.ndarray, state: int, background: float):
    """What the tuples in ``state`` add to the v0 calibration and the partials, in one pass:
    (row (2, 6): the columns of :func:`sum_rows` summed over them, in order; their number; and over
    both axes the sums of P^2, u^2 and P u with u = m0 - ``background``)."""
    if HAVE_NUMBA and terms.ndim == 3 and terms.shape[1:] == (6, 2):
        return _one_sums(terms, states, state, float(background))
    return _one_sums_numpy(terms, states, state, background)


def _one_sums_numpy(terms, states, state, background):
    """Reference of :func:`_one_sums` (and the path without numba); xx, yy, xy in numpy's summation order."""
    sel = terms[states == state]
    t = np.asarray(sel, np.float64)
    P, u = t[:, 0], t[:, 2] - background
    row = sum_rows(sel).sum(axis=0) if len(sel) else np.zeros((2, 6))
    return row, len(sel), float((P * P).sum()), float((u * u).sum()), float((P * u).sum())


@jit
def _one_sums(terms, states, state, background):  # pragma: no cover - compiled; sum_rows' steps, summed in order
    row = np.zeros((2, 6))
    n = 0
    xx = yy = xy = 0.0
    for i in range(states.shape[0]):
        if states[i] != state:
            continue
        n += 1
        for ax in range(2):
            p, q, m0 = np.float64(terms[i, 0, ax]), np.float64(terms[i, 1, ax]), np.float64(terms[i, 2, ax])
            row[ax, 0] += p * p + q * q - np.float64(terms[i, 3, ax])
            row[ax, 1] += m0
            row[ax, 2] += m0 * m0
            row[ax, 3] += np.float64(terms[i, 4, ax])
            row[ax, 4] += p
            row[ax, 5] += q * q - np.float64(terms[i, 5, ax])
            u = m0 - background
            xx += p * p
            yy += u * u
            xy += p * u
    return row, n, xx, yy, xy


def harmonic_terms(counts: np.ndarray, positions: np.ndarray, dtype=np.float32, with_var_q: bool = False):
    """Per axis (n, 2): P, Q, m0 and the Poisson variances var(P) + var(Q), var(m0) (counts as means);
    with ``with_var_q`` also var(Q) alone (the v0 calibration's Q term).

    float32 (the sums that use them accumulate in float64); the coefficients of the 3 counts in
    P, Q and m0 = c1 + P are written out instead of stacked (this runs on every tuple)."""
    c = counts.astype(dtype, copy=False)
    c1, s1, c2, s2 = beam_phases(positions, dtype)
    u1, u2 = 1 - c1, 1 - c2
    inv = 1 / (u1 * s2 + u2 * s1)
    n0, n1, n2 = c[..., 0], c[..., 1], c[..., 2]
    dm, dp = n0 - n1, n2 - n1
    P = (dm * s2 + dp * s1) * inv
    Q = (dp * u1 - dm * u2) * inv
    m0 = n1 + P
    inv2 = inv * inv
    var_pq = ((s2 * s2 + u2 * u2) * n0 + ((s1 + s2) ** 2 + (u2 - u1) ** 2) * n1 + (s1 * s1 + u1 * u1) * n2) * inv2
    a1 = 1 - (s1 + s2) * inv
    var_m0 = (s2 * s2 * n0 + s1 * s1 * n2) * inv2 + a1 * a1 * n1
    if with_var_q:
        return P, Q, m0, var_pq, var_m0, (u2 * u2 * n0 + (u2 - u1) ** 2 * n1 + u1 * u1 * n2) * inv2
    return P, Q, m0, var_pq, var_m0


def harmonic_block(counts: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(n, 6, 2) float32: ``np.stack(traces.harmonic_terms(counts, positions, with_var_q=True), axis=1)``
    (P, Q, m0, var(P)+var(Q), var(m0), var(Q) per axis) written in one pass; the trigonometry stays
    numpy's (its float32 cos / sin round as the references' do), the rest is the same float32 steps."""
    if not HAVE_NUMBA:
        return np.stack(harmonic_terms(counts, positions, with_var_q=True), axis=1)
    return _harmonic_block(counts.astype(np.float32, copy=False), *beam_phases(positions, np.float32))


def beam_phases(positions: np.ndarray, dtype) -> tuple[np.ndarray, ...]:
    """cos and sin of K times each axis's two beam steps, (n, 2) each: (c1, s1, c2, s2) (in float32
    the values closed_form.harmonic_fit computes; the general model's features use them too)."""
    p = positions.astype(dtype, copy=False)
    k = dtype(physics.K_NM)
    h1 = k * (p[..., 1] - p[..., 0])
    h2 = k * (p[..., 2] - p[..., 1])
    return np.cos(h1), np.sin(h1), np.cos(h2), np.sin(h2)


@jit
def _harmonic_block(c, c1, s1, c2, s2):  # pragma: no cover - compiled; traces.harmonic_terms' float32 steps
    n = c.shape[0]
    out = np.empty((n, 6, 2), np.float32)
    one = np.float32(1.0)
    for i in range(n):
        for ax in range(2):
            a1, b1, a2, b2 = c1[i, ax], s1[i, ax], c2[i, ax], s2[i, ax]
            u1, u2 = one - a1, one - a2
            inv = one / (u1 * b2 + u2 * b1)
            n0, n1, n2 = c[i, ax, 0], c[i, ax, 1], c[i, ax, 2]
            dm, dp = n0 - n1, n2 - n1
            P = (dm * b2 + dp * b1) * inv
            out[i, 0, ax] = P
            out[i, 1, ax] = (dp * u1 - dm * u2) * inv
            out[i, 2, ax] = n1 + P
            inv2 = inv * inv
            sb, du = b1 + b2, u2 - u1
            out[i, 3, ax] = ((b2 * b2 + u2 * u2) * n0 + (sb * sb + du * du) * n1 + (b1 * b1 + u1 * u1) * n2) * inv2
            a = one - sb * inv
            out[i, 4, ax] = (b2 * b2 * n0 + b1 * b1 * n2) * inv2 + a * a * n1
            out[i, 5, ax] = (u2 * u2 * n0 + du * du * n1 + u1 * u1 * n2) * inv2
    return out
