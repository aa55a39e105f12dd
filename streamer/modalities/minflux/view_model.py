"""Qt-free state of the MINFLUX monitor view: bounded buffers, decimation, per-trace view, histogram.

The view (:mod:`.view`) only reads from here, and everything here is plain numpy so it is testable
headless. Results are ingested in blocks (one ``ingest`` per drained frame, not per tuple); all
memory is bounded by the ring capacities, so a monitor left open for days does not grow. Shell
numbers (messages, rates, display lag, errors) live in :mod:`streamer.monitor.state`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .prediction import FLAG_LOW_PHOTONS, FLAG_NO_INTERVAL, FLAG_NONPHYSICAL, FLAG_NOT_TWO_ON, FLAG_OUT_OF_RANGE
from ...monitor.ring import RingColumns

COLUMNS = {
    "distance": np.float32,
    "lower": np.float32,
    "upper": np.float32,
    "flags": np.uint8,
    "trace": np.int64,
    "time": np.float64,  # acquisition time of the tuple, s (NaN when unknown)
    "ordinal": np.int64,  # running number of the tuple as received by this monitor
    # the self-calibrating predictor's (NaN / 255 from the others)
    "photons": np.float32,
    "state": np.uint8,
    "v0": np.float32,
    "background": np.float32,
}
#: rows of the per-trace partial-sum table kept (partials.py): ~5 per packet of 1,000 tuples
PARTIAL_COLUMNS = {"stream": np.int32, "trace": np.int64, "kind": np.uint8, "n": np.int64, "sums": (np.float64, (2, 6))}
STATE_NAMES = {2: "2-on", 1: "1-on", 0: "background"}


def _six_columns(sums, m: int) -> np.ndarray:
    """A result's partial sums as (m, 2, 6); a worker from before the v0 columns sends (m, 2, 4):
    NaN in the two it lacks (its streams' v0 is then the squared form, :mod:`.partials`)."""
    a = np.asarray(sums, np.float64)
    if a.size == m * 2 * 4:
        return np.concatenate([a.reshape(m, 2, 4), np.full((m, 2, 2), np.nan)], axis=2)
    return a.reshape(m, 2, 6)

FLAG_NAMES = {
    FLAG_NO_INTERVAL: "no interval",
    FLAG_LOW_PHOTONS: "low photons",
    FLAG_OUT_OF_RANGE: "out of range",
    FLAG_NONPHYSICAL: "non-physical",
    FLAG_NOT_TWO_ON: "not 2-on",
}


@dataclass
class Curve:
    """What the rolling trace plot draws: bin means of ``per_point`` consecutive tuples for the
    distance, and of ``band_per_point`` tuples for the interval band (coarser: a filled polygon
    with thousands of noisy vertices is what costs a frame, not the line)."""

    x: np.ndarray
    distance: np.ndarray
    per_point: int
    band_x: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    band_per_point: int
    x_label: str
    n_tuples: int


@dataclass
class ViewSummary:
    """What the view's own info line shows (the shell's panel has rates, lag, errors)."""

    tuples: int = 0  # tuples in the current view (all traces or the selected one)
    flag_counts: dict[str, int] = field(default_factory=dict)  # in the current view
    mean_width_nm: float = float("nan")  # mean 90% interval width in the current view


def _bin_means(values: np.ndarray, k: int) -> np.ndarray:
    """Mean of each consecutive group of k values, ignoring NaN (NaN for an all-NaN group)."""
    v = values.reshape(-1, k)
    finite = np.isfinite(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(finite, v, 0).sum(axis=1, dtype=np.float64) / finite.sum(axis=1)).astype(np.float32)


#: result array -> (ingest argument, dtype, fill when a result lacks it)
RESULT_COLUMNS = {"distance": ("distance", np.float32, np.nan), "lower": ("lower", np.float32, np.nan),
                  "upper": ("upper", np.float32, np.nan), "flags": ("flags", np.uint8, 0),
                  "trace_id": ("trace_id", np.int64, -1), "time": ("time_s", np.float64, np.nan),
                  "photons": ("photons", np.float32, np.nan), "state": ("state", np.uint8, 255),
                  "v0": ("v0", np.float32, np.nan), "background": ("background", np.float32, np.nan)}


@dataclass
class StateCurve:
    """Photons per tuple of the current view, bin means, one curve per segmented state (NaN where a
    bin's majority state is another): the intensity trace a MINFLUX user reads the steps on."""

    x: np.ndarray
    photons: dict[str, np.ndarray]
    per_point: int


@dataclass
class Instrument:
    """The newest stream's live calibration and, merged over every worker's partial sums, its
    calibration and the selected trace's answer."""

    stream: str = ""
    v0_live: float = float("nan")  # as used for the newest tuple (the worker's own estimate)
    background_live: float = float("nan")
    v0: float = float("nan")  # merged over all workers' partial sums
    v0_se: float = float("nan")
    background: float = float("nan")
    background_se: float = float("nan")
    calibrated: bool = False
    trace: int | None = None
    trace_distance: float = float("nan")  # the selected trace, merged
    trace_lower: float = float("nan")
    trace_upper: float = float("nan")
    trace_two_on: int = 0


class MinfluxViewModel:
    """Ring buffers of the newest results plus a dedicated ring for one selected trace.

    capacity: tuples kept for the all-traces view; trace_capacity: tuples kept for the selected
    trace (filled from the main ring when selected, then from every ingested block).
    """

    def __init__(self, capacity: int = 200_000, trace_capacity: int | None = None,
                 max_traces: int = 2000, hist_range_nm: tuple[float, float] = (0.0, 60.0),
                 hist_bin_nm: float = 0.5, hide_flags: int = FLAG_LOW_PHOTONS | FLAG_NOT_TWO_ON) -> None:
        self.ring = RingColumns(capacity, COLUMNS)
        # tuples with any of these flags are counted but not drawn: a background-only or
        # bleached tuple's "distance" would read as a measurement on the trace and histogram
        self.hide_flags = hide_flags
        self.trace_ring = RingColumns(capacity if trace_capacity is None else trace_capacity, COLUMNS)
        self.selected_trace: int | None = None
        self.hist_edges = np.arange(hist_range_nm[0], hist_range_nm[1] + hist_bin_nm / 2, hist_bin_nm)
        self._traces: dict[int, int] = {}  # trace id -> last ordinal seen
        self._max_traces = max_traces
        self.tuples = 0  # tuples ever ingested
        self.version = 0  # bumped on every change, so the GUI redraws only when needed
        self.partials = RingColumns(max(1000, capacity), PARTIAL_COLUMNS)
        self._streams: dict[str, int] = {}
        self.newest_stream: str | None = None

    # -- ingest ---------------------------------------------------------------------------
    def ingest_results(self, results: list[dict]) -> None:
        """A block of decoded result dicts (:func:`streamer.core.wire.decode_message`), oldest first:
        one ring write for all of them. Optional arrays missing from some results read as unknown."""
        results = [r for r in results if r.get("distance") is not None]
        if not results:
            return
        self.newest_stream = str(results[-1].get("stream", ""))
        parts = [r for r in results if r.get("part_sums") is not None and len(r["part_sums"])]
        if parts:
            code = [self._streams.setdefault(str(r.get("stream", "")), len(self._streams)) for r in parts]
            self.partials.push(stream=np.concatenate([np.full(len(r["part_n"]), c, np.int32)
                                                      for r, c in zip(parts, code)]),
                               **{k: np.concatenate([np.asarray(r[f"part_{k}"]).reshape(len(r["part_n"]), *shape)
                                                     for r in parts])
                                  for k, shape in (("trace", ()), ("kind", ()), ("n", ()))},
                               sums=np.concatenate([_six_columns(r["part_sums"], len(r["part_n"])) for r in parts]))
            self.version += 1
        cols: dict[str, np.ndarray] = {}
        for key, (arg, dtype, fill) in RESULT_COLUMNS.items():
            if any(r.get(key) is not None for r in results):
                cols[arg] = np.concatenate([np.asarray(r[key]).ravel() if r.get(key) is not None
                                            else np.full(len(r["distance"]), fill, dtype) for r in results])
        self.ingest(**cols)

    def ingest(self, distance: np.ndarray, lower: np.ndarray | None = None, upper: np.ndarray | None = None,
               flags: np.ndarray | None = None, trace_id: np.ndarray | None = None,
               time_s: np.ndarray | None = None, photons: np.ndarray | None = None, state: np.ndarray | None = None,
               v0: np.ndarray | None = None, background: np.ndarray | None = None) -> None:
        """Add a block of results (columns of equal length n; optional ones default to unknown)."""
        distance = np.asarray(distance, np.float32).ravel()
        n = len(distance)
        if n == 0:
            return

        def col(values, dtype, fill):
            if values is None:
                return np.full(n, fill, dtype)
            arr = np.asarray(values, dtype).ravel()
            if len(arr) != n:
                raise ValueError(f"result columns differ in length: {len(arr)} vs {n} distances")
            return arr

        start = self.ring.total
        rows = {
            "distance": distance,
            "lower": col(lower, np.float32, np.nan),
            "upper": col(upper, np.float32, np.nan),
            "flags": col(flags, np.uint8, 0),
            "trace": col(trace_id, np.int64, -1),
            "time": col(time_s, np.float64, np.nan),
            "ordinal": np.arange(start, start + n, dtype=np.int64),
            "photons": col(photons, np.float32, np.nan),
            "state": col(state, np.uint8, 255),
            "v0": col(v0, np.float32, np.nan),
            "background": col(background, np.float32, np.nan),
        }
        self.ring.push(**rows)
        if self.selected_trace is not None:
            mask = rows["trace"] == self.selected_trace
            if mask.any():
                self.trace_ring.push(**{k: v[mask] for k, v in rows.items()})
        self._note_traces(rows["trace"], rows["ordinal"])
        self.tuples += n
        self.version += 1

    def _note_traces(self, traces: np.ndarray, ordinals: np.ndarray) -> None:
        ids, last_idx = np.unique(traces[::-1], return_index=True)  # last occurrence of each id
        last = ordinals[::-1][last_idx]
        self._traces.update(zip(ids.tolist(), last.tolist()))
        if len(self._traces) > 2 * self._max_traces:  # forget the longest-silent traces
            keep = sorted(self._traces.items(), key=lambda kv: kv[1])[-self._max_traces:]
            self._traces = dict(keep)

    # -- selection ------------------------------------------------------------------------
    def traces(self) -> list[int]:
        """Known trace ids, most recently seen first (bounded to ``max_traces``)."""
        ranked = sorted(self._traces.items(), key=lambda kv: -kv[1])[: self._max_traces]
        return [t for t, _ in ranked]

    def select_trace(self, trace: int | None) -> None:
        """Show one trace (None: all). Seeds its ring with what the main ring still holds."""
        self.selected_trace = None if trace is None else int(trace)
        self.trace_ring.clear()
        if self.selected_trace is not None:
            rows = self.ring.columns()
            mask = rows["trace"] == self.selected_trace
            self.trace_ring.push(**{k: v[mask] for k, v in rows.items()})
        self.version += 1

    def _view(self) -> RingColumns:
        return self.ring if self.selected_trace is None else self.trace_ring

    # -- what the plots draw --------------------------------------------------------------
    def curve(self, max_points: int = 2000, window: int | None = None, band_points: int = 300) -> Curve:
        """Newest ``window`` tuples of the current view, decimated to at most ``max_points``
        (distance) and ``band_points`` (interval bounds) points.

        Decimation averages consecutive tuples, which is what a person can read at 300k tuples/s;
        the oldest remainder that does not fill a bin is left out.
        """
        view = self._view()
        n = len(view) if window is None else min(window, len(view))
        cols = view.columns(last=n)
        hidden = (cols["flags"] & self.hide_flags) != 0
        if hidden.any():
            for c in ("distance", "lower", "upper"):
                cols[c] = np.where(hidden, np.float32(np.nan), cols[c])
        times = cols["time"]
        use_time = self.selected_trace is not None and n > 0 and bool(np.isfinite(times).all())
        x = times if use_time else cols["ordinal"].astype(np.float64)
        x_label = "acquisition time (s)" if use_time else "tuple number (received order)"

        def decimate(points: int, *names: str) -> tuple[int, list[np.ndarray]]:
            k = max(1, -(-n // max(1, points)))
            tail = slice(n - (n // k) * k, n)
            if k == 1:
                return 1, [x[tail]] + [cols[c][tail] for c in names]
            return k, [x[tail].reshape(-1, k).mean(axis=1)] + [_bin_means(cols[c][tail], k) for c in names]

        k, (xd, dist) = decimate(max_points, "distance")
        kb, (xb, lower, upper) = decimate(band_points, "lower", "upper")
        return Curve(xd, dist, k, xb, lower, upper, kb, x_label, n)

    def histogram(self, window: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) of per-tuple distances in the current view; out-of-range values are clipped
        into the edge bins so that nothing silently disappears."""
        view = self._view()
        d = view.column("distance", last=window)
        d = d[np.isfinite(d) & ((view.column("flags", last=window) & self.hide_flags) == 0)]
        edges = self.hist_edges
        nbins = len(edges) - 1
        # uniform bins: index arithmetic + bincount, much cheaper than np.histogram's sort
        idx = np.clip(((d - edges[0]) * (nbins / (edges[-1] - edges[0]))).astype(np.int64), 0, nbins - 1)
        return edges, np.bincount(idx, minlength=nbins)

    def summary(self) -> ViewSummary:
        """Flag counts and mean interval width of the current view (all traces or the selected one)."""
        view = self._view()
        flags = view.column("flags")
        width = view.column("upper") - view.column("lower")
        width = width[np.isfinite(width)]
        return ViewSummary(len(view), {name: int(np.count_nonzero(flags & bit)) for bit, name in FLAG_NAMES.items()},
                           float(width.mean()) if len(width) else float("nan"))

    # -- self-calibrating predictor: states, live calibration, merged per-trace answers --------
    def has_states(self) -> bool:
        """Whether the view holds segmented tuples (the self-calibrating predictor's results)."""
        return bool((self._view().column("state", last=1000) != 255).any())

    def state_curve(self, max_points: int = 1000, window: int | None = None) -> StateCurve:
        """Photons per tuple of the newest ``window`` tuples, bin means of ``k`` tuples, split by the
        bin's majority state."""
        view = self._view()
        n = len(view) if window is None else min(window, len(view))
        ph, st = view.column("photons", last=n), view.column("state", last=n)
        times = view.column("time", last=n)  # the x of curve(): time for one trace when all are known
        use_time = self.selected_trace is not None and n > 0 and bool(np.isfinite(times).all())
        x = times if use_time else view.column("ordinal", last=n).astype(np.float64)
        k = max(1, -(-n // max(1, max_points)))
        m = (n // k) * k
        tail = slice(n - m, n)
        ph, st, x = ph[tail].reshape(-1, k), st[tail].reshape(-1, k), x[tail].reshape(-1, k).mean(axis=1)
        mean = _bin_means(ph.reshape(-1), k) if k > 1 else ph.reshape(-1)
        counts = np.stack([(st == s).sum(axis=1) for s in STATE_NAMES])  # (3, bins)
        major = np.array(list(STATE_NAMES))[np.argmax(counts, axis=0)] if m else np.zeros(0, np.uint8)
        known = counts.max(axis=0) > 0 if m else np.zeros(0, bool)
        return StateCurve(x, {name: np.where(known & (major == s), mean, np.float32(np.nan))
                              for s, name in STATE_NAMES.items()}, k)

    def instrument(self) -> Instrument:
        """Live calibration of the newest stream and the selected trace's merged answer."""
        from .partials import merge, trace_answer
        from .simulate import STATE_TWO

        out = Instrument(stream=self.newest_stream or "", trace=self.selected_trace)
        v0 = self.ring.column("v0", last=1)
        bg = self.ring.column("background", last=1)
        if len(v0):
            out.v0_live, out.background_live = float(v0[0]), float(bg[0])
        code = self._streams.get(out.stream)
        if code is None or not len(self.partials):
            return out
        rows = self.partials.columns()
        mine = rows["stream"] == code
        kind, cal = merge(rows["trace"][mine], rows["kind"][mine], rows["n"][mine], rows["sums"][mine])
        out.v0, out.v0_se, out.calibrated = cal["v0"], cal["v0_se"], cal["calibrated"]
        out.background, out.background_se = cal["background"], cal["background_se"]
        if self.selected_trace is not None:
            # the trace's 2-on rows with the stream's calibration just computed (as `streamer traces`)
            sel = np.flatnonzero(mine)[(rows["trace"][mine] == self.selected_trace) & (kind == STATE_TWO)]
            if len(sel):
                (d, lo, hi), *_ = trace_answer(cal, self.selected_trace, rows["sums"][sel], rows["n"][sel])
                out.trace_distance, out.trace_lower, out.trace_upper = float(d), float(lo), float(hi)
                out.trace_two_on = int(rows["n"][sel].sum())
        return out
