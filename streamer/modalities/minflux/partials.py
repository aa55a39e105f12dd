"""Per-trace answers over any number of workers: additive partial sums, persisted, then merged.

A worker's live per-trace distance (:class:`.traces.TraceDistance`) sees only the packets that
worker got: with two workers each trace's running answer is built from about half of its tuples,
and the two halves never meet. Everything the per-trace estimate and the self-calibration use is a
sum over tuples, so each worker also returns, per packet, the sums it added (this module's
*partials*, the result's second table, persisted exactly once with the packet). Merging them
(:func:`reduce`) gives every trace its answer from all its 2-on tuples, whatever the number of
workers, restarts or re-sent packets (a packet's partials are stored once, with its one stored
result).

Rows (``kind`` = the state the sums belong to):

* 2 (2-on): per axis (sum of P^2 + Q^2 - var PQ, sum m0, sum m0^2, sum var m0, sum P,
  sum Q^2 - var Q) (:func:`.traces.sum_rows`) over a chunk of at most ``block`` consecutive confirmed
  2-on tuples of one trace: the jackknife's blocks (the first four columns);
* 1 (1-on): the same six sums over the packet's confirmed 1-on tuples of the trace (v0:
  :func:`.traces.v0_from_sums`);
* 0 (background-only): ``sums[0, 0]`` = their total counts (b).

``n`` is the number of tuples of the row. Partials persisted before the last two columns
(``(2, 4)`` sums) are still read; their v0 is the squared-form ratio they were made with.

**Relabelling at the merge** (:func:`merge`). A worker tells 2-on from 1-on by the signal level
against the 2-on level of the trace *it has seen*. With several workers, one may get only packets
after a trace's first bleaching step: it has never seen the pair, takes the lone emitter's level for
the 2-on level and calls its 1-on tuples 2-on (200 development streams of 4-packet traces: 30 % of
the true 1-on tuples with 3 workers, 53 % with 4, 2.4 % with one; 43 % and 69 % before the
worker-side guards of :class:`.traces.Segmenter`), and each such row pulls its trace's distance
towards 0. The merge has every worker's rows of the trace: each 2-on row's level, the mean of
m0 - b over its axis-tuples (m0 is proportional to the emitters' brightness whatever their
separation), is checked against the trace's 2-on level (the tuple-weighted
``TOP_QUANTILE`` of its 2-on rows' levels), and a row below ``TWO_FRACTION`` of it is not the
pair's -- the segmenter's own rule, applied with the whole trace's evidence. Such a row is used for
nothing: it is mostly the survivor's tuples, but the one where that worker's packet saw the
bleaching step also holds some of the pair's, and counted as 1-on those pulled v0 low (the same
streams: -1.9e-4 relative with 3 workers against -1.0e-4 with one; a relative v0 error of 1e-4
moves a 5-nm trace by ~0.4 nm); the stream's v0 comes from the tuples the workers called 1-on
themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .simulate import STATE_BACKGROUND, STATE_ONE, STATE_TWO
from .traces import (LEGACY_SUM_COLUMNS, STATE_UNKNOWN, SUM_COLUMNS, TOP_QUANTILE, TWO_FRACTION, StreamCalibration,
                     background_spread, estimate_from_blocks, pooled_den, trace_background_and_se, v0_from_sums)

# the live calibration's thresholds, so merged and live answers call the same streams calibrated
MIN_BACKGROUND_TUPLES = StreamCalibration.min_background_tuples
MIN_ONE_TUPLES = StreamCalibration.min_one_tuples


@dataclass
class Partials:
    """One packet's rows (all (m,) but ``sums`` (m, 2, 6))."""

    item: np.ndarray   # int32: index (in the packet) of the trace's last tuple, for ordering
    trace: np.ndarray  # int64
    kind: np.ndarray   # uint8
    n: np.ndarray      # int32
    sums: np.ndarray   # float64

    @classmethod
    def empty(cls) -> "Partials":
        return cls(np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.int32),
                   np.zeros((0, 2, SUM_COLUMNS)))

    def arrays(self) -> dict[str, np.ndarray]:
        """The declared result columns (``item`` + ``part_*``)."""
        return {"item": self.item, "part_trace": self.trace, "part_kind": self.kind, "part_n": self.n,
                "part_sums": self.sums}


def _chunks(k: int, block: int) -> list[int]:
    """Boundaries splitting k rows into ceil(k / block) nearly equal consecutive chunks."""
    parts = max(1, -(-k // block))
    return [(j * k) // parts for j in range(parts + 1)]


def packet_partials(confirmed: list, last_index: dict[int, int], block: int) -> Partials:
    """Rows for one packet: ``confirmed`` = [(trace, 2-on summands (k, 2, 6) of :func:`sum_rows` or
    None, (the 1-on summands summed (2, 6), their number) or None, total counts of the background-only
    tuples, their number)], the sums the worker adds to its own state."""
    item, trace, kind, n, sums = [], [], [], [], []

    def row(t, k_, n_, s_):
        item.append(last_index[t]), trace.append(t), kind.append(k_), n.append(n_), sums.append(s_)

    for t, rows2, one, bg_total, n_bg in confirmed:
        if rows2 is not None and len(rows2):
            cuts = _chunks(len(rows2), block)
            c = np.add.reduceat(rows2, cuts[:-1], axis=0)
            for j in range(len(c)):
                row(t, STATE_TWO, cuts[j + 1] - cuts[j], c[j])
        if one is not None and one[1]:
            row(t, STATE_ONE, int(one[1]), one[0])
        if n_bg:
            s = np.zeros((2, SUM_COLUMNS))
            s[0, 0] = bg_total
            row(t, STATE_BACKGROUND, n_bg, s)
    if not item:
        return Partials.empty()
    return Partials(np.array(item, np.int32), np.array(trace, np.int64), np.array(kind, np.uint8),
                    np.array(n, np.int32), np.array(sums, np.float64).reshape(-1, 2, SUM_COLUMNS))


def _den(sums: np.ndarray, n: np.ndarray, b: np.ndarray) -> np.ndarray:
    """v0's denominator terms sum((m0 - b)^2 - var m0) over both axes, per row (b per row)."""
    return pooled_den(sums[:, :, 1], sums[:, :, 2], sums[:, :, 3], n[:, None] * 1.0, b[:, None]).sum(axis=1)


def _as_sums(sums) -> np.ndarray:
    """(m, 2, k) float64 rows, k = 6 or, from partials persisted before the v0 columns, 4."""
    sums = np.asarray(sums, np.float64)
    k = sums.shape[-1] if sums.ndim == 3 and sums.shape[-1] in (SUM_COLUMNS, LEGACY_SUM_COLUMNS) else SUM_COLUMNS
    return sums.reshape(-1, 2, k)


def _v0_rows(sums: np.ndarray, n: np.ndarray, b_row: np.ndarray) -> tuple[float, np.ndarray]:
    """v0 from 1-on rows and, per row, v0 without that row (the jackknife's)."""
    if sums.shape[-1] < SUM_COLUMNS or not np.isfinite(sums[:, :, 4:]).all():  # legacy rows: the squared form
        num = sums[:, :, 0].sum(axis=1)
        den = _den(sums, n, b_row)
        N, D = num.sum(), den.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.sqrt(N / D) if N > 0 and D > 0 else np.nan
            loo = np.sqrt(np.clip((N - num) / np.where(D - den > 0, D - den, np.nan), 0, None))
        return float(v), loo
    sp, sq = sums[:, :, 4].sum(axis=1), sums[:, :, 5].sum(axis=1)
    s1 = (sums[:, :, 1] - n[:, None] * b_row[:, None]).sum(axis=1)
    s2 = _den(sums, n, b_row)
    v = v0_from_sums(sp.sum(), sq.sum(), s1.sum(), s2.sum())
    return v, v0_from_sums(sp.sum() - sp, sq.sum() - sq, s1.sum() - s1, s2.sum() - s2)


def calibration(trace, kind, n, sums) -> dict:
    """One stream's instrument from its merged rows: b (stream and per trace with its own), v0 with a
    delete-one-row jackknife standard error over the 1-on rows, and whether it is calibrated.
    Vectorised over rows (the monitor calls it on every refresh)."""
    trace, kind, n = np.asarray(trace, np.int64), np.asarray(kind), np.asarray(n, np.int64)
    sums = _as_sums(sums)
    bg = kind == STATE_BACKGROUND
    n_bg = int(n[bg].sum())
    b = float(sums[bg, 0, 0].sum() / (6.0 * n_bg)) if n_bg else float("nan")
    ids, inv = np.unique(trace[bg], return_inverse=True)
    k_t = np.bincount(inv, weights=n[bg], minlength=len(ids))
    c_t = np.bincount(inv, weights=sums[bg, 0, 0], minlength=len(ids))
    has = k_t >= MIN_BACKGROUND_TUPLES
    own = {int(t): (float(c / (6.0 * k)), int(k)) for t, c, k in zip(ids[has], c_t[has], k_t[has])}
    one = np.flatnonzero(kind == STATE_ONE)
    n_one = int(n[one].sum())
    calibrated = n_bg >= MIN_BACKGROUND_TUPLES and n_one >= MIN_ONE_TUPLES
    out = {"background": b, "background_tuples": n_bg, "one_tuples": n_one, "own_background": own,
           # a trace without its own background takes the stream's, with the between-trace spread
           "background_spread": background_spread([v[0] for v in own.values()], [v[1] for v in own.values()]),
           "calibrated": calibrated, "v0": float("nan"), "v0_se": float("nan"),
           "background_se": float(np.sqrt(max(b, 1e-3) / (6.0 * n_bg))) if n_bg else float("nan")}
    if not calibrated or len(one) == 0:
        return out
    # each 1-on row with its trace's own background where it has one (as the live calibration)
    v, loo = _v0_rows(sums[one], n[one], _row_backgrounds(trace[one], out))
    if not np.isfinite(v):
        return out
    out["v0"] = v
    k = len(one)
    if k >= 2:
        out["v0_se"] = float(np.sqrt((k - 1) / k * np.nansum((loo - np.nanmean(loo)) ** 2)))
    return out


def _row_backgrounds(trace: np.ndarray, cal: dict) -> np.ndarray:
    """Per row: its trace's own background where it has one, else the stream's (as the live path)."""
    b = np.full(len(trace), cal["background"])
    own = cal["own_background"]
    if own:
        ids = np.fromiter(own, np.int64, len(own))
        vals = np.array([v[0] for v in own.values()])
        o = np.argsort(ids)
        ids, vals = ids[o], vals[o]
        pos = np.minimum(np.searchsorted(ids, trace), len(ids) - 1)
        mine = ids[pos] == trace
        b[mine] = vals[pos[mine]]
    return b


def relabel(trace, kind, n, sums, cal: dict) -> np.ndarray:
    """``kind`` with the 2-on rows that are not the pair's (level below ``TWO_FRACTION`` of their
    trace's 2-on level, see the module doc) as ``STATE_UNKNOWN``, used by nothing; ``cal``: the
    stream's :func:`calibration` (its backgrounds come from background-only rows, which relabelling
    does not touch). Unchanged when the stream has no background yet (no level to compare).
    Vectorised over rows."""
    trace, kind, n = np.asarray(trace, np.int64), np.asarray(kind, np.uint8), np.asarray(n, np.float64)
    two = np.flatnonzero(kind == STATE_TWO)
    if len(two) < 2 or not np.isfinite(cal["background"]):
        return kind
    sums = _as_sums(sums)
    level = sums[two, :, 1].sum(axis=1) / (2.0 * np.maximum(n[two], 1.0)) - _row_backgrounds(trace[two], cal)
    tr, w = trace[two], n[two]
    order = np.lexsort((level, tr))
    t_s, l_s, w_s = tr[order], level[order], w[order]
    starts = np.flatnonzero(np.r_[True, t_s[1:] != t_s[:-1]])
    cw = np.cumsum(w_s)
    before = np.r_[0.0, cw[starts[1:] - 1]]
    # the tuple-weighted TOP_QUANTILE of each trace's row levels: the first row whose running weight reaches it
    ref = l_s[np.searchsorted(cw, before + TOP_QUANTILE * np.add.reduceat(w_s, starts), side="left")]
    ref = np.repeat(ref, np.diff(np.r_[starts, len(t_s)]))
    low = np.zeros(len(two), bool)
    low[order] = (ref > 0) & (l_s < TWO_FRACTION * ref)
    if not low.any():
        return kind
    out = kind.copy()
    out[two[low]] = STATE_UNKNOWN
    return out


def merge(trace, kind, n, sums, background: float | None = None) -> tuple[np.ndarray, dict]:
    """One stream's merged rows: the kinds after :func:`relabel` (levels above the given
    ``background`` when there is one) and the :func:`calibration` they give."""
    kind = np.asarray(kind, np.uint8)
    # the calibration reads only background-only and 1-on rows, which relabelling leaves as they are:
    # one call serves the relabelled kinds too
    cal = calibration(trace, kind, n, sums)
    given = cal if background is None else {**cal, "background": float(background), "own_background": {}}
    return relabel(trace, kind, n, sums, given), cal


def reduce(stream: np.ndarray, trace: np.ndarray, kind: np.ndarray, n: np.ndarray, sums: np.ndarray,
           v0: float | None = None, background: float | None = None, min_blocks: int = 4,
           sys_nm: float = 0.0) -> dict[str, np.ndarray]:
    """Per (stream, trace): distance + 90% interval from all merged 2-on rows (:func:`merge`), with the
    stream's merged calibration (or the given ``v0`` / ``background``, then exact: no calibration error)."""
    stream = np.asarray(stream).astype(str)
    trace, n = np.asarray(trace, np.int64), np.asarray(n, np.int64)
    kind = np.array(kind, np.uint8)  # a copy: relabelled per stream
    sums = _as_sums(sums)
    cols: dict[str, list] = {k: [] for k in ("stream", "trace_id", "distance", "lower", "upper", "two_on_tuples",
                                              "blocks", "v0", "background", "calibrated")}
    for s in np.unique(stream):
        ins = stream == s
        kind[ins], cal = merge(trace[ins], kind[ins], n[ins], sums[ins], background)
        two = ins & (kind == STATE_TWO)
        for t in np.unique(trace[two]):
            rows = two & (trace == t)
            est, v, b_t = trace_answer(cal, int(t), sums[rows], n[rows], v0, background, min_blocks, sys_nm)
            for k, val in zip(("stream", "trace_id", "distance", "lower", "upper", "two_on_tuples", "blocks", "v0",
                               "background", "calibrated"),
                              (s, int(t), *est, int(n[rows].sum()), int(rows.sum()), v, b_t,
                               bool(cal["calibrated"] or v0 is not None))):
                cols[k].append(val)
    return {k: np.asarray(v) for k, v in cols.items()}


def trace_answer(cal: dict, trace: int, sums: np.ndarray, n: np.ndarray, v0: float | None = None,
                 background: float | None = None, min_blocks: int = 4, sys_nm: float = 0.0):
    """One trace's (distance, lower, upper) from its merged 2-on rows ``sums`` (k, 2, 4 or 6) of ``n`` (k,)
    tuples, with its stream's :func:`calibration` ``cal`` (or the given ``v0`` / ``background``, then
    exact); also returns the v0 and background used."""
    v = min(cal["v0"], 1.0) if v0 is None else float(v0)  # v0 <= 1 physically (as the live path)
    v_se = cal["v0_se"] if v0 is None else 0.0
    if background is not None:
        b_t, b_se = float(background), 0.0
    else:
        b_t, b_se = trace_background_and_se(cal["own_background"].get(int(trace)), cal["background"],
                                            cal["background_se"], cal["background_spread"])
    if not (np.isfinite(v) and np.isfinite(b_t)):
        return (np.nan, np.nan, np.nan), v, b_t
    sums = _as_sums(sums)
    est = estimate_from_blocks(sums, np.asarray(n, float), np.zeros(sums.shape[1:]),
                               0.0, v, b_t, v_se if np.isfinite(v_se) else 0.0, b_se, min_blocks, sys_nm)
    return est, v, b_t
