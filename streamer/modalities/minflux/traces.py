"""Streaming per-trace analysis: state segmentation, instrument self-calibration, per-trace distance.

Everything is vectorised over the tuples of a packet; state carried between packets is a few
numbers per trace (segmentation window tail, level) and per stream (calibration sums).

**Segmentation** (2-on / 1-on / background-only), per trace, on a trailing window of ``window``
tuples. The per-axis harmonic fit (P, Q) of the counts is linear in the counts, so its Poisson
variance is known from the counts themselves; summed over the window,
Z = sum_axes |sum P, sum Q|^2 / sum var(P, Q) is ~1 for background-only windows (no modulation)
and in the hundreds for any emitter. Emitter windows split into 2-on / 1-on by their signal level
(mean counts - 6 b) against the trace's 2-on level (running, started at the first emitter
window): a single emitter, re-centred by the feedback loop, gives at most ~55% of the pair's
signal. The trailing window mislabels ~window/2 tuples after each change point.

**Self-calibration** (per stream: v0 and b are instrument properties shared by its traces):
b = mean count per exposure over background-only tuples. v0 from 1-on tuples: for one emitter the
per-axis harmonic amplitude w = sqrt(P^2 + Q^2) over the background-corrected mean u = m0 - b is
exactly v0 (:func:`v0_from_sums`). P (the curvature of the three counts) is the noisy term: its
Poisson variance is several times its square at ~100 photons, so the squared form
sum(P^2 + Q^2 - var) / sum(u^2 - var) loses most of the information (measured: 2.1-2.4x the
spread of v0 at v0 = 0.85). The feedback loop centres the emitter, so w = P + Q^2 / (w + P) ~
P + Q^2 / (2w): v0 sum u = sum P + sum Q^2 / (2 v0 u), linear in P, whose noise then partly cancels
between numerator and denominator (m0 = centre count + P); the small Q term is bias-corrected and
scaled by pooled moments.

**Per-trace distance** (:class:`TraceDistance`, streaming): pooled visibility of the trace's 2-on
tuples per axis, in the same linear form (a pair is centred like a lone emitter) -> d^2, with a
delete-one-block jackknife over blocks of ``block`` consecutive 2-on tuples (honest under the
correlated errors of a drifting centre: blocks are longer than the correlation), Student-t with
K - 1 degrees of freedom, plus the calibration's uncertainty. :func:`per_trace_table` is the
fallback over persisted per-tuple distances (weighted mean, batch means), for when only results are
at hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import physics
from .simulate import STATE_BACKGROUND, STATE_ONE, STATE_TWO
# harmonic_terms, sum_rows: also this module's API (they live next to their compiled forms)
from .trace_kernels import harmonic_terms, one_sums, pooled_estimate, sum_rows, window_stats  # noqa: F401

STATE_UNKNOWN = 255


# --------------------------------------------------------------------------- calibration state


def background_spread(b_own, n_own) -> float:
    """Between-trace standard deviation of the background from the traces with their own estimate
    (``b_own`` counts/exposure from ``n_own`` tuples each), their Poisson noise removed; 0 with
    fewer than 3 such traces (nothing to measure it on)."""
    b, n = np.asarray(b_own, float), np.asarray(n_own, float)
    if len(b) < 3:
        return 0.0
    return float(np.sqrt(max(b.var(ddof=1) - np.mean(np.maximum(b, 1e-3) / (6.0 * n)), 0.0)))


def pooled_den(s1, s2, sv, n, b):
    """sum over tuples of (m0 - b)^2 - var m0 from the sums s1 = sum m0, s2 = sum m0^2, sv = sum
    var m0 of n tuples: the noise-corrected denominator of v0 and of a pair's visibility."""
    return s2 - 2.0 * b * s1 + n * b * b - sv


def _den_terms(sums: np.ndarray, b: float) -> np.ndarray:
    """One trace's (or a group's) background-dependent v0 sums over its 1-on axis-tuples, from its sums
    (sum m0, sum m0^2, sum var m0, axis-tuples): (sum (m0 - b)^2 - var m0, sum m0 - b)."""
    return np.array([pooled_den(sums[0], sums[1], sums[2], sums[3], b), sums[0] - sums[3] * b])


#: columns of the per-axis sums (:func:`sum_rows`, the partials): P^2 + Q^2 - var PQ, m0, m0^2,
#: var m0 (the pooled visibility), then P and Q^2 - var Q (the v0 calibration, :func:`v0_from_sums`)
SUM_COLUMNS = 6
LEGACY_SUM_COLUMNS = 4  # partials persisted before the P and Q^2 columns


def v0_from_sums(sp, sq, s1, s2):
    """v0 from pooled 1-on sums (scalars or arrays): ``sp`` = sum P, ``sq`` = sum(Q^2 - var Q),
    ``s1`` = sum(m0 - b), ``s2`` = sum((m0 - b)^2 - var m0), over axis-tuples; NaN where undefined.

    Per axis-tuple w = P + Q^2 / (w + P) exactly; the emitter sits near the line minimum (Q << P), so
    sum w ~ sum P + sum Q^2 / (2 w). With w = v0 u and the Q term's 1 / u weights replaced by their
    pooled mean (sum u / sum u^2, the emitter's offset does not depend on its brightness): v0 s1 =
    sp + sq s1 / (2 v0 s2), a quadratic in v0. The Q term is ~0.2% of v0 at a 3-nm centring error."""
    if not any(np.ndim(x) for x in (sp, sq, s1, s2)):  # one stream's (per packet): plain floats
        sp, sq, s1, s2 = float(sp), float(sq), float(s1), float(s2)
        if s1 <= 0 or sp <= 0:
            return float("nan")
        corr = 2.0 * s1 * s1 * max(sq, 0.0) / s2 if s2 > 0 else 0.0
        return (sp + math.sqrt(sp * sp + corr)) / (2.0 * s1)
    sp, sq, s1, s2 = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (sp, sq, s1, s2)))
    # no np.errstate (it costs more than the arithmetic here): undefined entries divide by inf / NaN
    corr = 2.0 * s1 * s1 * np.maximum(sq, 0.0) / np.where(s2 > 0, s2, np.inf)
    v = (sp + np.sqrt(sp * sp + corr)) / (2.0 * np.where(s1 > 0, s1, np.nan))
    return np.where(sp > 0, v, np.nan)


def trace_background_and_se(own: tuple[float, int] | None, b_stream: float, se_stream: float,
                            spread: float) -> tuple[float, float]:
    """(background, its standard error) for one trace: its own (b, tuples) with the Poisson error,
    else the stream's, whose error for one trace also holds the spread between traces."""
    if own is not None:
        b, k = own
        return b, float(np.sqrt(max(b, 1e-3) / (6.0 * k)))
    return b_stream, float(np.hypot(se_stream, spread))



@dataclass
class StreamCalibration:
    """Running sums of one stream; :meth:`estimate` gives (v0, b, n_background, n_one)."""

    prior_v0: float = 0.9
    prior_background: float = 1.0
    bg_sum: float = 0.0
    bg_n: int = 0
    p_sum: float = 0.0  # sum P over 1-on axis-tuples (background-free)
    q_sum: float = 0.0  # sum Q^2 - var Q
    one_n: int = 0  # axis-tuples
    # for the v0 standard error (delta method on sum P / sum u): sums of P^2, u^2, P u with
    # u = m0 - b at the background estimate of the moment they were added
    xx: float = 0.0
    yy: float = 0.0
    xy: float = 0.0

    min_background_tuples: int = 200
    min_one_tuples: int = 500
    trace_bg: dict = field(default_factory=dict)  # trace -> [sum of counts, tuples] of background-only tuples
    #: trace -> the background-dependent 1-on sums (sum m0, sum m0^2, sum var m0, axis-tuples); sum P
    #: and sum Q^2 - var Q do not depend on b and are kept for the stream only (p_sum, q_sum)
    trace_one: dict = field(default_factory=dict)
    # v0's background-dependent sums kept up to date as tuples arrive (O(1) per packet, not O(traces
    # seen)): the 1-on sums of traces on the stream background, and, summed, the terms
    # (sum (m0 - b)^2 - var m0, sum m0 - b) of traces with their own
    _shared: np.ndarray = field(default_factory=lambda: np.zeros(4))
    _own_den: np.ndarray = field(default_factory=lambda: np.zeros(2))
    # the traces with their own background, summed (count, sum b, sum b^2, sum b / (6 n)): the
    # between-trace spread in O(1) per packet
    _own_bg: np.ndarray = field(default_factory=lambda: np.zeros(4))

    def add(self, counts: np.ndarray, state: np.ndarray, P, Q, m0, var_pq, var_m0, var_q,
            trace: int | None = None) -> None:
        """Add tuples (``counts``: per tuple (n, 2, 3) or totals (n,)) with their states and harmonic
        terms (``harmonic_terms(..., with_var_q=True)``); ``trace``: all from that trace (the v0 sums
        are kept per trace, so each trace's own background applies)."""
        self.add_terms(counts, state, np.stack([P, Q, m0, var_pq, var_m0, var_q], axis=1), trace)

    def add_terms(self, counts: np.ndarray, state: np.ndarray, terms: np.ndarray, trace: int | None = None) -> None:
        """:meth:`add` with the harmonic terms as one (n, 6, 2) array (P, Q, m0, var_pq, var_m0, var_q)."""
        self.add_background(counts, state, trace)
        if (state == STATE_ONE).any():
            if terms.shape[1] < 6:
                raise ValueError("1-on tuples need var(Q) in their harmonic terms "
                                 "(harmonic_terms(..., with_var_q=True))")
            self.add_one(*one_sums(terms, state, STATE_ONE, self.background), trace=trace)

    def add_background(self, counts: np.ndarray, state: np.ndarray, trace: int | None = None) -> tuple[float, int]:
        """The background-only tuples among ``counts`` (per tuple (n, 2, 3) or totals (n,)); returns
        their total count and number (the packet's background partial-sum row)."""
        bg = state == STATE_BACKGROUND
        n_bg = int(bg.sum())
        if not n_bg:
            return 0.0, 0
        total = float(counts[bg].sum(dtype=np.float64))
        self.bg_sum += total
        self.bg_n += n_bg
        if trace is None:
            return total, n_bg
        tb = self.trace_bg.setdefault(trace, [0.0, 0])
        b_old, own_old = self.trace_background(trace)
        n_old = tb[1]
        tb[0] += total
        tb[1] += n_bg
        b_new, own_new = self.trace_background(trace)
        if own_old:
            self._own_bg -= (1.0, b_old, b_old * b_old, max(b_old, 1e-3) / (6.0 * n_old))
        if own_new:
            self._own_bg += (1.0, b_new, b_new * b_new, max(b_new, 1e-3) / (6.0 * tb[1]))
        s_t = self.trace_one.get(trace)
        if own_new and s_t is not None:  # its 1-on sums now count with its (new) own background
            if own_old:
                self._own_den -= _den_terms(s_t, b_old)
            else:
                self._shared -= s_t
            self._own_den += _den_terms(s_t, b_new)
        return total, n_bg

    def add_one(self, row: np.ndarray, n: int, xx: float, yy: float, xy: float, trace: int | None = None) -> None:
        """``n`` 1-on tuples by their sums (:func:`.trace_kernels.one_sums` at :attr:`background`): ``row``
        (2, 6) the columns of :func:`sum_rows` (the packet's 1-on partial sums, the same numbers), and
        the sums of P^2, u^2, P u for v0's standard error."""
        if not n:
            return
        sums = np.array([row[0, 1] + row[1, 1], row[0, 2] + row[1, 2], row[0, 3] + row[1, 3], 2.0 * n])
        key = -1 if trace is None else trace
        self.trace_one[key] = self.trace_one.get(key, 0.0) + sums
        b_own, own = self.trace_background(key) if key != -1 else (0.0, False)
        if own:  # the terms are polynomials in b whose coefficients are the sums
            self._own_den += _den_terms(sums, b_own)
        else:
            self._shared += sums
        self.p_sum += float(row[0, 4] + row[1, 4])
        self.q_sum += float(row[0, 5] + row[1, 5])
        self.one_n += 2 * int(n)
        self.xx += xx
        self.yy += yy
        self.xy += xy

    @property
    def background(self) -> float:
        if self.bg_n < self.min_background_tuples:
            return self.prior_background
        return self.bg_sum / (6.0 * self.bg_n)

    def trace_background(self, trace: int) -> tuple[float, bool]:
        """(background of ``trace`` once it has its own background-only tuples else the stream's, own?)"""
        tb = self.trace_bg.get(trace)
        if tb is not None and tb[1] >= self.min_background_tuples:
            return tb[0] / (6.0 * tb[1]), True
        return self.background, False

    def trace_background_se(self, trace: int) -> tuple[float, float]:
        """(background for ``trace``, its standard error): its own with the Poisson error once it has
        its own background-only tuples; else the stream's, whose error for *this* trace also holds
        the spread of background between traces (local autofluorescence; measured on the traces
        that have their own), not only the error of the stream's mean."""
        b, own = self.trace_background(trace)
        return trace_background_and_se((b, self.trace_bg[trace][1]) if own else None, b, self.background_se,
                                        self.background_spread)

    @property
    def background_spread(self) -> float:
        """:func:`background_spread` of the traces with their own background, from running sums."""
        c, s, s2, noise = self._own_bg
        if c < 3:
            return 0.0
        return float(np.sqrt(max((s2 - s * s / c) / (c - 1) - noise / c, 0.0)))

    @property
    def v0(self) -> float:
        """:func:`v0_from_sums` pooled over traces, each 1-on sum with its own trace's background
        (background can differ between traces; one stream-wide b biased v0 by ~-2e-4 at v0 = 1 with
        b ~ U(0.5, 2) per trace)."""
        if self.one_n < 2 * self.min_one_tuples:
            return self.prior_v0
        s2, s1 = self._own_den + _den_terms(self._shared, self.background)
        v = v0_from_sums(self.p_sum, self.q_sum, s1, s2)
        return v if np.isfinite(v) else self.prior_v0

    @property
    def v0_se(self) -> float:
        """Standard error of :attr:`v0` (delta method on sum P / sum u, whose error the small Q term
        hardly changes; 0.05 before calibration)."""
        if self.one_n < 2 * self.min_one_tuples:
            return 0.05
        s1 = float(_den_terms(self._shared, self.background)[1] + self._own_den[1])
        if s1 <= 0:
            return 0.05
        R = self.p_sum / s1
        return float(np.sqrt(max(self.xx - 2 * R * self.xy + R * R * self.yy, 0.0)) / s1)

    @property
    def background_se(self) -> float:
        """Standard error of :attr:`background` (Poisson; 30% of the prior before calibration)."""
        if self.bg_n < self.min_background_tuples:
            return 0.3 * self.prior_background
        return float(np.sqrt(max(self.background, 1e-3) / (6.0 * self.bg_n)))

    @property
    def calibrated(self) -> bool:
        return self.bg_n >= self.min_background_tuples and self.one_n >= 2 * self.min_one_tuples


# --------------------------------------------------------------------------- segmentation


_LEVEL_EDGES = np.geomspace(1.0, 1e5, 401)  # per-trace histogram of emitter-window signal levels

#: an emitter's signal level above this share of its trace's 2-on level is 2-on: one of the pair gives
#: at most ~0.56 of it (brightness ratio 0.8-1); the trace's 2-on level is the TOP_QUANTILE of its
#: emitter levels (shared by :class:`Segmenter` and the merged partials' relabelling)
TWO_FRACTION = 0.72
TOP_QUANTILE = 0.75


def _edge(j: int) -> float:
    """Lower edge of level-histogram bin ``j`` (the bins of ``np.searchsorted(_LEVEL_EDGES, level)``)."""
    return float(_LEVEL_EDGES[min(max(j, 1), len(_LEVEL_EDGES) - 1) - 1])


@dataclass
class _TraceSeg:
    #: last window-1 tuples' columns P (2), Q (2), var(P)+var(Q) (2), total counts: (k, 7) float64
    tail: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)))
    hist: np.ndarray = field(default_factory=lambda: np.zeros(len(_LEVEL_EDGES) + 1, np.int64))


class Segmenter:
    """Streaming 2-on / 1-on / background segmentation per trace (see module doc).

    A window holds an emitter when its modulation is significant (Z > ``z_signal``) or its signal
    level (mean counts - 6 b) exceeds ``one_fraction`` of the trace's 2-on level; the 2-on level is
    the ``top_quantile`` of the trace's emitter-window levels so far (a histogram per trace), and
    an emitter window is 2-on above ``two_fraction`` of it, or of the level of the ``top_windows``-th
    highest window where that is a distinct, higher level (the pair seen briefly, then its survivor
    long). A modulated window counts as an emitter's only with a level ``floor_z`` standard errors
    above the background's; in a trace not seen modulated yet, only with Z > ``z_first``.
    """

    def __init__(self, window: int = 40, z_signal: float = 12.0, two_fraction: float = TWO_FRACTION,
                 one_fraction: float = 0.2, top_quantile: float = TOP_QUANTILE, floor_z: float = 4.0,
                 top_windows: int = 40, z_first: float = 24.0):
        self.window, self.z_signal, self.two_fraction, self.floor_z = window, z_signal, two_fraction, floor_z
        self.top_windows, self.z_first = top_windows, z_first
        self.one_fraction, self.top_quantile = one_fraction, top_quantile
        self.traces: dict[int, _TraceSeg] = {}

    def segment(self, trace: int, P, Q, var_pq, n_tot, background: float) -> np.ndarray:
        """States (uint8) of one trace's consecutive tuples (arrays for those tuples only)."""
        w = self.window
        st = self.traces.get(trace)
        if st is None:
            st = _TraceSeg()
            self.traces[trace] = st
        k = len(st.tail)
        a = np.empty((k + len(n_tot), 7))
        a[:k] = st.tail
        a[k:, 0:2], a[k:, 2:4], a[k:, 4:6], a[k:, 6] = P, Q, var_pq, n_tot
        # Z of the trailing window's modulation; its threshold shrinks with the window (a trace's first
        # tuples are found) once the trace has been seen modulated, before that it is z_first. An
        # emitter window also needs a signal level above the background's noise (floor_z standard
        # errors of a mean of cnt tuples of ~6 b counts each): a short window of background-only tuples
        # passes the modulation test by chance, and its level ~0 taken as the trace's 2-on level would
        # make every later background tuple "2-on" -- what a worker that gets only a trace's last
        # packets sees. (The background is the prior until calibrated, so the floor alone does not hold
        # then: z_first, which no window of background-only tuples reached on development streams --
        # max 20 over 16,500 full windows, z_signal in 0.5 % of them.)
        modulated, level = window_stats(a, k, w, background, self.z_signal, self.z_first, bool(st.hist.any()),
                                        self.floor_z, _LEVEL_EDGES, st.hist)
        total = st.hist.sum()
        if total:
            cum = np.cumsum(st.hist)
            top = _edge(int(np.searchsorted(cum, self.top_quantile * total)))
            # a worker that gets a packet in which the pair bleaches after a few dozen tuples sees more
            # survivor than pair windows: the quantile is then the survivor's level, so the survivor would
            # be called 2-on. The level of the top_windows-th highest window is the pair's once the pair has
            # been seen that long; it replaces the quantile where it is a distinct level above it (two
            # emitters against one), so a trace seen from its start keeps the quantile
            if total > self.top_windows:
                top_m = _edge(int(np.searchsorted(cum, total - self.top_windows, side="right")))
                if top_m * self.two_fraction > top:
                    top = top_m
        else:
            top = np.inf
        sig = modulated | (level > self.one_fraction * top)
        states = np.where(sig, np.where(level > self.two_fraction * top, STATE_TWO, STATE_ONE),
                          STATE_BACKGROUND).astype(np.uint8)
        keep = max(0, len(a) - (w - 1))
        st.tail = a[keep:].copy()  # (a copy: the packet's block is not kept alive by a view)
        return states


# --------------------------------------------------------------------------- per-trace distance


_T95_TABLE: np.ndarray | None = None


def _t95_table() -> np.ndarray:
    """Student-t 95% quantiles (two-sided 90%) for dof 1..1000 (computed once)."""
    global _T95_TABLE
    if _T95_TABLE is None:
        from scipy.stats import t

        _T95_TABLE = t.ppf(0.95, np.arange(1, 1001))
    return _T95_TABLE


def _t95(dof: np.ndarray) -> np.ndarray:
    """Student-t 95% quantile (two-sided 90%), tabulated for dof 1..1000."""
    return _t95_table()[np.clip(np.asarray(dof, int), 1, 1000) - 1]


_D2_SCALE = (2.0 / physics.K_NM) ** 2  # d_a^2 = (2/K)^2 arccos(c_a)^2


def squared_separation(r: np.ndarray) -> np.ndarray:
    """d_a^2 from r = cos^2(K d_a / 2); linear continuation (2/K)^2 (1 - r) above r = 1 keeps the
    estimate unbiased to first order near d = 0 (where noise pushes r above 1)."""
    r = np.asarray(r, float)
    inside = (2.0 / physics.K_NM * np.arccos(np.sqrt(np.clip(r, 0.0, 1.0)))) ** 2
    return np.where(r <= 1.0, inside, _D2_SCALE * (1.0 - r))


@dataclass
class _TraceAcc:
    blocks: list = field(default_factory=list)  # (2, 6) per completed block: the columns of sum_rows
    cur: np.ndarray = field(default_factory=lambda: np.zeros((2, SUM_COLUMNS)))
    cur_n: int = 0
    n_blocks_n: list = field(default_factory=list)


class TraceDistance:
    """Streaming per-trace distance + 90% interval from the trace's 2-on tuples (pooled visibility).

    Per axis the pooled visibility V_a (:func:`v0_from_sums` on the axis's sums) gives
    r_a = (V_a / v0)^2, which estimates cos^2(K d_a / 2) consistently whatever each tuple's photon
    count (a per-tuple estimator's bias does not average away; this one's does), so
    d^2 = sum_a d_a^2(r_a). (The squared form sum(P^2 + Q^2 - var) / sum((m0 - b)^2 - var m0), which
    it replaced, spread 1.2-2x wider over development traces, most at large d.) The
    interval is a delete-one-block jackknife over blocks of ``block`` consecutive 2-on tuples
    (honest under correlated errors within a block), Student-t with K - 1 degrees of freedom on d^2,
    then square-rooted (clipped at 0); the distance itself is sqrt(d^2) corrected for the bias of the
    root (:func:`debiased_sqrt`); ``sys_nm`` adds a calibrated systematic term.
    """

    def __init__(self, block: int = 200, min_blocks: int = 4, sys_nm: float = 0.0):
        self.block, self.min_blocks, self.sys_nm = block, min_blocks, sys_nm
        self.traces: dict[int, _TraceAcc] = {}

    def add(self, trace: int, P, Q, m0, var_pq, var_m0, var_q) -> None:
        """One trace's 2-on tuples, in order (arrays (k, 2))."""
        self.add_rows(trace, sum_rows(np.stack([P, Q, m0, var_pq, var_m0, var_q], axis=1)))

    def add_rows(self, trace: int, rows: np.ndarray) -> None:
        """:meth:`add` with the per-tuple summands (k, 2, 6) float64 already formed (:func:`sum_rows`)."""
        if rows.shape[-1] != SUM_COLUMNS:
            raise ValueError(f"per-trace rows need the {SUM_COLUMNS} columns of sum_rows (harmonic terms with var(Q)), "
                             f"got {rows.shape[-1]}")
        acc = self.traces.setdefault(trace, _TraceAcc())
        i, n, b = 0, len(rows), self.block
        while i < n:
            take = min(b - acc.cur_n, n - i)
            acc.cur += rows[i:i + take].sum(axis=0)
            acc.cur_n += take
            i += take
            if acc.cur_n == b:
                acc.blocks.append(acc.cur.copy())
                acc.n_blocks_n.append(b)
                acc.cur[:] = 0.0
                acc.cur_n = 0

    def estimate(self, trace: int, v0: float, background: float, v0_se: float = 0.0,
                 background_se: float = 0.0) -> tuple[float, float, float]:
        """(distance, lower, upper); ``v0_se``/``background_se``: calibration uncertainty, propagated
        into the interval (a self-calibrated instrument is not exact: at small d, v0 dominates)."""
        acc = self.traces.get(trace)
        if acc is None or (not acc.blocks and acc.cur_n == 0):
            return (np.nan, np.nan, np.nan)
        blocks = np.asarray(acc.blocks).reshape(-1, 2, SUM_COLUMNS)
        return estimate_from_blocks(blocks, np.full(len(blocks), float(self.block)), acc.cur, acc.cur_n, v0,
                                    background, v0_se, background_se, self.min_blocks, self.sys_nm)


def estimate_from_blocks(blocks: np.ndarray, nb: np.ndarray, extra: np.ndarray, extra_n: float, v0: float,
                         background: float, v0_se: float = 0.0, background_se: float = 0.0, min_blocks: int = 4,
                         sys_nm: float = 0.0) -> tuple[float, float, float]:
    """(distance, lower, upper) from blocks of 2-on sums (k, 2, 6) (or, persisted before the last two
    columns, (k, 2, 4): the squared form, see :func:`_d2`) of ``nb`` (k,) tuples each, plus
    ``extra`` sums of ``extra_n`` tuples that count in the estimate but not as a jackknife block (a
    block still filling). Shared by the live :class:`TraceDistance` and the merged partials.

    Compiled (:func:`.trace_kernels.pooled_estimate`) for blocks with the v0 columns; the numpy steps
    below are its reference and serve the squared form."""
    fast = pooled_estimate(blocks, nb, extra, extra_n, v0, background, v0_se, background_se, min_blocks, sys_nm,
                           _t95_table(), _GH_X, _GH_W)
    if fast is not None:
        return fast
    total = blocks.sum(axis=0) + extra
    n_total = nb.sum() + extra_n
    if n_total <= 0:
        return (np.nan, np.nan, np.nan)
    k = len(blocks)
    if k < min_blocks:
        d2 = _d2(total, n_total, v0, background)
        return (float(np.sqrt(max(d2, 0.0))), np.nan, np.nan)
    # every d^2 of this estimate in one vectorised call (this runs per trace and packet): the total,
    # the k leave-one-block-out sums, then the total at v0 +- se and b +- se (calibration error)
    full = blocks.sum(axis=0)
    var_v0 = [(v0 + v0_se, background), (v0 - v0_se, background)] if v0_se > 0 else []
    var_b = [(v0, background + background_se), (v0, max(background - background_se, 0.0))] if background_se > 0 else []
    extra_rows = var_v0 + var_b
    sums = np.concatenate([total[None], full[None] - blocks, np.broadcast_to(total, (len(extra_rows), *total.shape))])
    ns = np.concatenate([[n_total], nb.sum() - nb, np.full(len(extra_rows), n_total)])
    v0s = np.array([v0] * (k + 1) + [a for a, _ in extra_rows], float)
    bs = np.array([background] * (k + 1) + [b for _, b in extra_rows], float)
    all_d2 = _d2(sums, ns, v0s, bs)
    d2, loo = float(all_d2[0]), all_d2[1:k + 1]
    var = (k - 1) / k * float(((loo - loo.mean()) ** 2).sum())
    cal2 = 0.0
    j = k + 1
    if v0_se > 0:
        cal2 += (0.5 * (float(all_d2[j]) - float(all_d2[j + 1]))) ** 2
        j += 2
    if background_se > 0:
        cal2 += (0.5 * (float(all_d2[j]) - float(all_d2[j + 1]))) ** 2
    # the calibration's error moves this trace's d^2 too: the bias of sqrt() comes from both
    est = debiased_sqrt(d2, float(np.sqrt(var + cal2)))
    half = float(np.sqrt(_t95(np.asarray(k - 1)) ** 2 * var + 1.6449**2 * cal2))
    lo2, hi2 = d2 - half, d2 + half
    lo, hi = float(np.sqrt(max(lo2, 0.0))), float(np.sqrt(max(hi2, 0.0)))
    if sys_nm:
        lo, hi = max(lo - 1.6449 * sys_nm, 0.0), hi + 1.6449 * sys_nm
    return (est, lo, hi)


_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(32)
_GH_W = _GH_W / _GH_W.sum()


def expected_sqrt(m: float, sd: float) -> float:
    """E[sqrt(max(X, 0))] for X ~ N(m, sd^2) (Gauss-Hermite, 32 nodes)."""
    return float(np.sqrt(np.maximum(m + sd * _GH_X, 0.0)) @ _GH_W)


def debiased_sqrt(d2: float, sd: float) -> float:
    """The distance from an unbiased but noisy d^2 (standard error ``sd``): sqrt(max(d^2, 0)) minus its
    bias under N(d^2, sd^2) (parametric-bootstrap bias correction), clipped at 0.

    d^2 pooled over a trace is unbiased (measured on 9,000 development traces: within 1.1 standard
    errors at every grid distance), but at 8-12.5 nm its spread (40-120 nm^2 at v0 0.85-1) is comparable to
    d^2 itself, so sqrt() read 0.4 nm low there; the earlier second-order term applied only where
    d^2 > 2 sd, which left most of those traces uncorrected. This correction is defined for every
    d^2 (also a negative one) and brings the bias to ~0.2 nm; it costs 2-7 % more spread at 5-12.5 nm."""
    plain = float(np.sqrt(max(d2, 0.0)))
    if not sd > 0:
        return plain
    return max(2.0 * plain - expected_sqrt(d2, sd), 0.0)


def _d2(sums: np.ndarray, n, v0, b):
    """d^2 from pooled sums (2, 6) (-> float) or a stack (k, 2, 6) with n (k,) (-> (k,)); v0 and b
    scalars or (k,) (one instrument per stacked sum).

    Per axis the pair's visibility V_a (harmonic amplitude over m0 - b) by :func:`v0_from_sums` on the
    axis's sums (the feedback loop centres the pair as it centres a lone emitter), r_a = (V_a / v0)^2;
    from (2, 4) sums (partials persisted before the P and Q^2 columns) the squared form
    r_a = sum(P^2 + Q^2 - var) / sum((m0 - b)^2 - var m0) / v0^2."""
    n = np.asarray(n, float)[..., None]
    v0 = np.asarray(v0, float)[..., None] if np.ndim(v0) else v0
    b = np.asarray(b, float)[..., None] if np.ndim(b) else b
    num, s1, s2, sv = sums[..., 0], sums[..., 1], sums[..., 2], sums[..., 3]
    den = pooled_den(s1, s2, sv, n, b)
    if sums.shape[-1] >= SUM_COLUMNS and np.isfinite(sums[..., 4:]).all():
        vis = v0_from_sums(sums[..., 4], sums[..., 5], s1 - n * b, den)
        r = np.where(np.isfinite(vis), vis * vis, 0.0) / (v0 * v0)
    else:
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0) / (v0 * v0)
    out = squared_separation(r).sum(axis=-1)
    return float(out) if out.ndim == 0 else out


def combine_blocks(bw: np.ndarray, bs: np.ndarray, cur_w: float, cur_s: float, min_blocks: int, sys_nm: float):
    """(estimate, lower, upper) from block weights/sums (+ the partial block in the mean only)."""
    W = bw.sum() + cur_w
    if W <= 0:
        return (np.nan, np.nan, np.nan)
    m = (bs.sum() + cur_s) / W
    k = len(bw)
    if k < min_blocks:
        return (float(m), np.nan, np.nan)
    mb = bs / bw
    mk = bs.sum() / bw.sum()
    var = float((bw**2 * (mb - mk) ** 2).sum() / bw.sum() ** 2 * k / (k - 1))
    half = float(np.sqrt((_t95(np.asarray(k - 1)) ** 2) * var + (1.6449 * sys_nm) ** 2))
    return (float(m), float(m - half), float(m + half))


def per_trace_table(trace_id: np.ndarray, distance: np.ndarray, weight: np.ndarray, use: np.ndarray,
                    block: int = 200, min_blocks: int = 3, sys_nm: float = 0.0) -> dict[str, np.ndarray]:
    """Per-trace combination over persisted results (tuples in acquisition order): arrays per trace."""
    ids = np.unique(trace_id)
    out = {k: np.full(len(ids), np.nan) for k in ("distance", "lower", "upper")}
    out["trace_id"] = ids
    out["n"] = np.zeros(len(ids), np.int64)
    order = np.argsort(trace_id, kind="stable")
    tid, d, w, u = trace_id[order], distance[order], weight[order], use[order]
    starts = np.searchsorted(tid, ids)
    ends = np.searchsorted(tid, ids, side="right")
    for j, (a, b) in enumerate(zip(starts, ends)):
        sel = u[a:b]
        dd, ww = d[a:b][sel], w[a:b][sel]
        k = len(dd) // block
        out["n"][j] = len(dd)
        if len(dd) == 0:
            continue
        bw = ww[:k * block].reshape(k, block).sum(1) if k else np.zeros(0)
        bs = (ww * dd)[:k * block].reshape(k, block).sum(1) if k else np.zeros(0)
        rest = slice(k * block, None)
        est = combine_blocks(bw, bs, float(ww[rest].sum()), float((ww * dd)[rest].sum()), min_blocks, sys_nm)
        out["distance"][j], out["lower"][j], out["upper"][j] = est
    return out
