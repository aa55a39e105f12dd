"""Compiled per-packet steps of :meth:`.general.GeneralPredictor.predict_with`: the 16 features
(:func:`.general.instrument_features`), each tuple's conformal table row (``_Intervals.rows``) and the
interval, range and photon checks that finish a prediction.

The numpy references make ~100 array calls per packet on a few hundred tuples, where the calls and
their temporaries, not the arithmetic, were the cost. The kernels do the references' float32
arithmetic in their order (the harmonic fit's divisions by the determinant, ``np.maximum`` /
``np.clip``'s NaN rules, numpy's float32 thresholds); every transcendental step stays one numpy call
on a whole array, as in the references, so the results round as the models were trained on any CPU
(numpy's float32 cos, sin, log, arccos, arctan2, log1p and power are its own vector code on some
CPUs, the C library's on others). ``tests/minflux/test_general_kernels.py`` checks that both paths
agree bit for bit. Without numba, or for non-integer counts, the references run.
"""

from __future__ import annotations

import numpy as np

from ...core.jit import HAVE_NUMBA, jit
from . import physics
from .trace_kernels import beam_phases

_K = np.float32(physics.K_NM)
_SEP = np.float32(physics.LAMBDA_NM / (2.0 * np.pi))


def instrument_features(counts: np.ndarray, positions: np.ndarray, v0, background) -> np.ndarray | None:
    """(n, 16) float32 features as :func:`.general.instrument_features` computes them, or None where
    the compiled passes do not apply (no numba, non-integer counts): the caller then runs the reference."""
    if not HAVE_NUMBA or np.asarray(counts).dtype.kind not in "iu":
        return None
    n = len(counts)
    p = positions.astype(np.float32, copy=False)
    v0 = np.broadcast_to(np.asarray(v0, np.float32), (n,))
    b = np.broadcast_to(np.asarray(background, np.float32), (n,))
    out = np.empty((n, 16), np.float32)
    P, Q, m0, tot, neff = _harmonic(counts, p, *beam_phases(p, np.float32), v0, b, out)
    out[:, 8] = np.log1p(tot)
    out[:, 9] = np.log(neff)
    clipped = _levels(m0, np.hypot(P, Q), np.arctan2(Q, P), v0, b, out)
    d = _SEP * np.arccos(clipped)  # (n, 4): d_x, d_y, then from the pooled level
    out[:, 2:4] = d[:, :2]
    h = np.hypot(d[:, 0::2], d[:, 1::2])
    out[:, 4], out[:, 15] = h[:, 0], h[:, 1]
    return out


@jit
def _fmax(a, b):  # np.maximum: NaN if either is NaN
    if a != a:
        return a
    if b != b:
        return b
    return a if a >= b else b


@jit
def _clip01(v, zero, one):  # np.clip(v, 0, 1): NaN stays NaN
    if v != v:
        return v
    return zero if v < zero else (one if v > one else v)


@jit
def _harmonic(counts, p, c1, s1, c2, s2, v0, b, out):  # pragma: no cover - compiled; see instrument_features
    """Per axis P, Q, m0 (closed_form.harmonic_fit's float32 steps); the total count, N_eff's
    argument of log (general.effective_photons); columns frac_x, bg_frac, v0, half_l of ``out``."""
    n = counts.shape[0]
    P = np.empty((n, 2), np.float32)
    Q = np.empty((n, 2), np.float32)
    m0 = np.empty((n, 2), np.float32)
    tot = np.empty(n, np.float32)
    neff = np.empty(n, np.float32)
    half, one, six, quarter = np.float32(0.5), np.float32(1.0), np.float32(6.0), np.float32(0.25)
    for i in range(n):
        t = np.float32(0.0)
        nx = np.float32(0.0)
        for ax in range(2):
            n0, n1, n2 = np.float32(counts[i, ax, 0]), np.float32(counts[i, ax, 1]), np.float32(counts[i, ax, 2])
            s = n0 + n1 + n2  # integer sums below 2**24: exact in any order (= c @ ones(3))
            if ax == 0:
                nx = s
            t += s
            a1, b1, a2, b2 = c1[i, ax], s1[i, ax], c2[i, ax], s2[i, ax]
            dm, dp = n0 - n1, n2 - n1
            det = (one - a1) * b2 + (one - a2) * b1
            pp = (dm * b2 + dp * b1) / det
            P[i, ax] = pp
            Q[i, ax] = (dp * (one - a1) - dm * (one - a2)) / det
            m0[i, ax] = n1 + pp
        tot[i] = t
        v0i, bi = v0[i], b[i]
        nm = _fmax(t, one)
        out[i, 7] = nx / nm
        sig = _fmax(nm - six * bi, half)
        neff[i] = _fmax(v0i * v0i * sig * sig / nm, quarter)
        out[i, 10] = six * bi / nm
        out[i, 11] = v0i
        out[i, 12] = ((p[i, 0, 2] - p[i, 0, 0]) + (p[i, 1, 2] - p[i, 1, 0])) * half * half
    return P, Q, m0, tot, neff


@jit
def _levels(m0, m1, psi, v0, b, out):  # pragma: no cover - compiled; see instrument_features
    """Visibilities per axis (own level, then the pair's pooled level: columns vis_*, vis_pool_*),
    the middle (mid_*), and the four visibilities clipped to [0, 1] for arccos, (n, 4)."""
    n = m0.shape[0]
    clipped = np.empty((n, 4), np.float32)
    zero, half, one = np.float32(0.0), np.float32(0.5), np.float32(1.0)
    k = _K
    for i in range(n):
        v0i, bi = v0[i], b[i]
        # the per-axis level carries Poisson noise of its own 3 counts; both axes share the pair's level
        pooled = (half * (m0[i, 0] + m0[i, 1]) - bi) * v0i
        for ax in range(2):
            out[i, 5 + ax] = -psi[i, ax] / k
            denom = (m0[i, ax] - bi) * v0i
            v = m1[i, ax] / denom if denom > zero else zero
            out[i, ax] = v
            clipped[i, ax] = _clip01(v, zero, one)
            v = m1[i, ax] / pooled if pooled > zero else zero
            out[i, 13 + ax] = v
            clipped[i, 2 + ax] = _clip01(v, zero, one)
    return clipped


# --------------------------------------------------------------------------- intervals and checks


@jit
def _class(cuts, x):  # np.searchsorted(cuts, x, side="right"); NaN sorts last, as in numpy
    if x != x:
        return len(cuts)
    lo, hi = 0, len(cuts)
    while lo < hi:
        mid = (lo + hi) >> 1
        if cuts[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@jit
def table_rows(info, v0, background, photons, half_l, info_cuts, v0_cuts, background_cuts, photon_cuts,
               half_l_cuts, sparse, power, photon_ref_inv):  # pragma: no cover - compiled; _Intervals.rows
    """Each tuple's row of the interval tables (its instrument cell: L/2 class x v0 class x background
    class x photon class, or its information bin's pooled row when the cell is sparse), the
    normalised information max(info, 1) / PHOTON_REF and minus the row's photon power (the conformal
    scale is their power, taken by numpy). Instrument cells only (``photon_cuts`` or
    ``background_cuts`` not empty)."""
    n = info.shape[0]
    rows = np.empty(n, np.intp)
    norm = np.empty(n, np.float32)
    neg_power = np.empty(n, np.float32)
    nb, nph = len(background_cuts) + 1, len(photon_cuts) + 1
    per_half_l = (len(v0_cuts) + 1) * nb * nph
    n_cells = len(sparse)
    one = np.float32(1.0)
    for i in range(n):
        k = (_class(v0_cuts, v0[i]) * nb + _class(background_cuts, background[i])) * nph + _class(photon_cuts, photons[i])
        if len(half_l_cuts):
            k += per_half_l * _class(half_l_cuts, half_l[i])
        if sparse[k]:
            k = n_cells + _class(info_cuts, info[i])
        rows[i] = k
        x = info[i]
        norm[i] = (x if (x >= one or x != x) else one) * photon_ref_inv
        neg_power[i] = -power[k]
    return rows, norm, neg_power


@jit
def _nan_min(a, b):  # np.minimum
    if a != a:
        return a
    if b != b:
        return b
    return a if a <= b else b


@jit
def finish(raw, d, ranged, inv_s, rows, lo, hi, q_marginal, lo_range, hi_range, photons, info, neff, v0, background,
           half_l, limits, flag_out, flag_low, flag_none):  # pragma: no cover - compiled
    """Flags; ``lo`` / ``hi`` (the conformal hull around ``raw``, core.conformal.hull) finished in place:
    where every bin is empty, the marginal quantile clipped to the row's range; widened to hold the
    reported ``d``; dropped (NaN) by the out-of-range / low-information checks of
    :meth:`.general.GeneralPredictor.predict_with` (``limits``: its float32 thresholds)."""
    n = raw.shape[0]
    flags = np.zeros(n, np.uint8)
    nan = np.float32(np.nan)
    inf = np.float32(np.inf)
    for i in range(n):
        c = rows[i]
        a, b = lo[i], hi[i]
        empty = not (a > -inf and a < inf)  # ~np.isfinite(lo)
        if empty:
            sm = inv_s[i] * q_marginal[c]
            a = _nan_min(_fmax(raw[i] - sm, lo_range[c]), hi_range[c])
            b = _nan_min(_fmax(raw[i] + sm, lo_range[c]), hi_range[c])
        a = _nan_min(a, d[i])
        b = _fmax(b, d[i])
        outside = (photons[i] > limits[0] or empty or v0[i] < limits[1] or v0[i] > limits[2]
                   or background[i] < limits[3] or background[i] > limits[4]
                   or half_l[i] < limits[5] or half_l[i] > limits[6]
                   or ranged[i] < limits[7] or ranged[i] > limits[8])
        low = photons[i] < limits[9] or neff[i] < limits[10] or info[i] < limits[11]
        f = np.uint8(0)
        if outside:
            f |= flag_out
        if low:
            f |= flag_low
        if outside or low:
            a = nan
            b = nan
            f |= flag_none
        lo[i] = a
        hi[i] = b
        flags[i] = f
    return flags
