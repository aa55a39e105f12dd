"""Qt-free state of the live monitor: bounded buffers, decimation, per-trace view, histogram.

The GUI only reads from here, and everything here is plain numpy so it is testable headless.
Results are ingested in blocks (one ``ingest`` per drained frame, not per tuple); all memory is
bounded by the ring capacities, so a monitor left open for days does not grow.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..predictor import FLAG_LOW_PHOTONS, FLAG_NO_INTERVAL, FLAG_NONPHYSICAL, FLAG_OUT_OF_RANGE
from .ring import RingColumns

COLUMNS = {
    "distance": np.float32,
    "lower": np.float32,
    "upper": np.float32,
    "flags": np.uint8,
    "trace": np.int64,
    "time": np.float64,  # acquisition time of the tuple, s (NaN when unknown)
    "ordinal": np.int64,  # running number of the tuple as received by this monitor
}

FLAG_NAMES = {
    FLAG_NO_INTERVAL: "no interval",
    FLAG_LOW_PHOTONS: "low photons",
    FLAG_OUT_OF_RANGE: "out of range",
    FLAG_NONPHYSICAL: "non-physical",
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
class Counters:
    """Numbers the status panel shows."""

    tuples: int = 0  # tuples received by the monitor
    messages: int = 0  # result messages received
    missed_messages: int = 0  # result seqs the monitor never saw (display-side drops, HWM)
    duplicate_messages: int = 0  # result seqs seen twice (the sink should never send these)
    rate: float = 0.0  # tuples/s arriving at the monitor, recent window
    latency_ms: dict[str, float] = field(default_factory=dict)  # display lag p50/p99 over recent frames
    rejected: int = 0  # error-channel messages (malformed packets)
    last_error: str = ""
    flag_counts: dict[str, int] = field(default_factory=dict)  # in the current window
    mean_width_nm: float = float("nan")  # mean 90% interval width in the current window
    pipeline: dict = field(default_factory=dict)  # newest sink statistics message, as decoded
    model_ids: tuple[str, ...] = ()


def _bin_means(values: np.ndarray, k: int) -> np.ndarray:
    """Mean of each consecutive group of k values, ignoring NaN (NaN for an all-NaN group)."""
    v = values.reshape(-1, k)
    finite = np.isfinite(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(finite, v, 0).sum(axis=1, dtype=np.float64) / finite.sum(axis=1)).astype(np.float32)


class MonitorModel:
    """Ring buffers of the newest results plus a dedicated ring for one selected trace.

    capacity: tuples kept for the all-traces view; trace_capacity: tuples kept for the selected
    trace (filled from the main ring when selected, then from every ingested block).
    """

    def __init__(self, capacity: int = 200_000, trace_capacity: int = 200_000, rate_window_s: float = 2.0,
                 max_traces: int = 2000, hist_range_nm: tuple[float, float] = (0.0, 60.0),
                 hist_bin_nm: float = 0.5, clock=time.monotonic, hide_flags: int = FLAG_LOW_PHOTONS) -> None:
        self.ring = RingColumns(capacity, COLUMNS)
        # tuples with any of these flags are counted but not drawn: a background-only or
        # bleached tuple's "distance" would read as a measurement on the trace and histogram
        self.hide_flags = hide_flags
        self.trace_ring = RingColumns(trace_capacity, COLUMNS)
        self.selected_trace: int | None = None
        self.counters = Counters()
        self.hist_edges = np.arange(hist_range_nm[0], hist_range_nm[1] + hist_bin_nm / 2, hist_bin_nm)
        self._rate_window_s = rate_window_s
        self._arrivals: deque[tuple[float, int]] = deque()
        self._latency = RingColumns(300, {"latency": np.float64})  # ~10 s of frames
        self._last_seq: dict[str, int] = {}
        self._first_seq: dict[str, int] = {}  # seqs before the first one shown are not counted
        self._traces: dict[int, int] = {}  # trace id -> last ordinal seen
        self._max_traces = max_traces
        self._model_ids: dict[str, None] = {}
        self._clock = clock
        self.version = 0  # bumped on every change, so the GUI redraws only when needed

    # -- ingest ---------------------------------------------------------------------------
    def ingest(self, distance: np.ndarray, lower: np.ndarray | None = None, upper: np.ndarray | None = None,
               flags: np.ndarray | None = None, trace_id: np.ndarray | None = None,
               time_s: np.ndarray | None = None, latency_s: np.ndarray | None = None) -> None:
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
        }
        self.ring.push(**rows)
        if self.selected_trace is not None:
            mask = rows["trace"] == self.selected_trace
            if mask.any():
                self.trace_ring.push(**{k: v[mask] for k, v in rows.items()})
        self._note_traces(rows["trace"], rows["ordinal"])
        if latency_s is not None:
            lat = np.asarray(latency_s, np.float64).ravel()
            self._latency.push(latency=lat[np.isfinite(lat)])
        now = self._clock()
        self._arrivals.append((now, n))
        self.counters.tuples += n
        self.version += 1

    def note_message(self, seq: int, model_id: str | None = None, stream: str = "") -> None:
        """Track result sequence numbers: gaps are messages this monitor missed (not pipeline loss)."""
        c = self.counters
        c.messages += 1
        last = self._last_seq.get(stream)
        self._first_seq.setdefault(stream, seq)
        if last is not None:
            if seq > last + 1:
                c.missed_messages += seq - last - 1
            elif seq <= last:
                c.duplicate_messages += 1
        if last is None or seq > last:
            self._last_seq[stream] = seq
        if model_id and model_id not in self._model_ids:
            self._model_ids[model_id] = None
            c.model_ids = tuple(self._model_ids)

    def last_seq(self, stream: str = "") -> int | None:
        """Newest result seq seen on ``stream`` (None before the first)."""
        return self._last_seq.get(stream)

    def first_seq(self, stream: str = "") -> int | None:
        """First result seq seen on ``stream``: missed-message counting starts there."""
        return self._first_seq.get(stream)

    def note_stats(self, stats: dict) -> None:
        """Keep the newest statistics message from the sink (rates, latency, gaps, rejects)."""
        self.counters.pipeline = dict(stats)
        self.version += 1

    def note_error(self, reason: str, count: int = 1) -> None:
        self.counters.rejected += count
        self.counters.last_error = reason
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

    def refresh_counters(self) -> Counters:
        """Recompute the windowed numbers (rate, latency percentiles, flags, interval width)."""
        c = self.counters
        now = self._clock()
        while self._arrivals and self._arrivals[0][0] < now - self._rate_window_s:
            self._arrivals.popleft()
        if self._arrivals:
            span = max(now - self._arrivals[0][0], 1e-3)
            c.rate = sum(n for _, n in self._arrivals) / max(span, min(self._rate_window_s, 0.5))
        else:
            c.rate = 0.0
        lat = self._latency.column("latency")
        c.latency_ms = ({"p50": float(np.percentile(lat, 50) * 1e3), "p99": float(np.percentile(lat, 99) * 1e3)}
                        if len(lat) else {})
        view = self._view()
        flags = view.column("flags")
        c.flag_counts = {name: int(np.count_nonzero(flags & bit)) for bit, name in FLAG_NAMES.items()}
        width = view.column("upper") - view.column("lower")
        width = width[np.isfinite(width)]
        c.mean_width_nm = float(width.mean()) if len(width) else float("nan")
        return c
