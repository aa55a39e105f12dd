"""The pyqtgraph monitor window: rolling distance trace with interval band, histogram, counters.

One QTimer drives everything on the GUI thread: drain the subscriber for at most a fixed time
budget, then redraw from the (already decimated) model. Draining is bounded, so a burst of
results costs display frames, never GUI responsiveness; ZeroMQ drops what the monitor does not
read at its receive high-water mark, so the pipeline never waits for the monitor.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Protocol

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from .model import FLAG_NAMES, Counters, MonitorModel

BAND_BRUSH = (80, 160, 255, 70)
TRACE_PEN = pg.mkPen((255, 200, 40), width=1.5)
BOUND_PEN = pg.mkPen((80, 160, 255, 160), width=1)


def check_qt_binding() -> None:
    """Refuse the one binding known to corrupt the interpreter (clear error instead of a crash)."""
    if pg.Qt.QT_LIB == "PySide6" and sys.version_info < (3, 12):
        import PySide6

        if tuple(int(v) for v in PySide6.__version__.split(".")[:2]) == (6, 12):
            raise RuntimeError(
                f"PySide6 {PySide6.__version__} drops a reference to None on every void Qt call under "
                f"Python {sys.version_info.major}.{sys.version_info.minor}, which crashes a live monitor "
                "(Fatal Python error: none_dealloc). Install 'PySide6-Essentials<6.12' or use Python >= 3.12.")


class Source(Protocol):
    """What feeds the window: drains pending messages into the model within a time budget."""

    def drain(self, model: MonitorModel, budget_s: float) -> int: ...


def _fmt_rate(x: float) -> str:
    return f"{x / 1e3:,.1f} k/s" if x >= 1e3 else f"{x:,.0f} /s"


def _fmt_num(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def format_counters(c: Counters, selected: int | None, hidden_flags: int = 0) -> str:
    """Plain-text status panel (monospace), one fact per line."""
    p = c.pipeline
    lines = [
        f"view       : {'all traces' if selected is None else f'trace {selected}'}",
        f"received   : {c.tuples:,} tuples in {c.messages:,} result messages",
        f"rate       : {_fmt_rate(c.rate)} at monitor",
    ]
    if c.latency_ms:
        lines.append(f"display lag: p50 {c.latency_ms['p50']:.1f} ms  p99 {c.latency_ms['p99']:.1f} ms "
                     "(acquisition -> newest result on screen, last ~10 s)")
    lines.append(f"not shown  : {c.missed_messages:,} result messages skipped by the monitor (display only)")
    if p:
        lines.append("pipeline   : " + "  ".join(f"{k} {_fmt_num(v)}" for k, v in p.items()) + "  (sink statistics)")
    lines.append(f"rejected   : {c.rejected:,} malformed packets" + (f"  (last: {c.last_error})" if c.last_error else ""))
    flagged = "  ".join(f"{k} {v:,}" for k, v in c.flag_counts.items() if v)
    hidden = ", ".join(name for bit, name in FLAG_NAMES.items() if bit & hidden_flags)
    lines.append(f"flags      : {flagged or 'none'} (in view)" + (f"; {hidden}: counted, not drawn" if hidden else ""))
    width = "n/a" if not np.isfinite(c.mean_width_nm) else f"{c.mean_width_nm:.2f} nm"
    lines.append(f"90% interval mean width: {width}" + (f"   model: {', '.join(c.model_ids)}" if c.model_ids else ""))
    return "\n".join(lines)


class MonitorWindow(QtWidgets.QWidget):
    """Live view of a result stream. ``source`` may be None (feed ``model`` directly, e.g. in tests)."""

    def __init__(self, model: MonitorModel, source: Source | None = None, *, frame_ms: int = 50,
                 drain_budget_s: float = 0.012, max_points: int = 1000, band_points: int = 300,
                 window_tuples: int = 50_000,
                 counters_every_s: float = 0.25, title: str = "MINFLUX distance monitor") -> None:
        check_qt_binding()
        super().__init__()
        self.model, self.source = model, source
        self.drain_budget_s, self.max_points, self.band_points = drain_budget_s, max_points, band_points
        self.counters_every_s = counters_every_s
        self.frame_times: deque[float] = deque(maxlen=10_000)  # seconds per GUI tick (drain + redraw)
        self.frame_intervals: deque[float] = deque(maxlen=10_000)  # seconds between ticks (incl. painting)
        self._last_tick: float | None = None
        self._drawn_version = -1
        self._last_counters = -np.inf
        self._known_traces: list[int] = []
        self.setWindowTitle(title)
        self._build(window_tuples)
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(frame_ms)
        self.timer.timeout.connect(self.tick)

    # -- layout ---------------------------------------------------------------------------
    def _build(self, window_tuples: int) -> None:
        controls = QtWidgets.QHBoxLayout()
        controls.addWidget(QtWidgets.QLabel("trace:"))
        self.trace_box = QtWidgets.QComboBox()
        # combo index -> trace id (None: all traces), kept in Python rather than as Qt item data
        self._box_traces: list[int | None] = []
        self._set_trace_items([], None)
        self.trace_box.setMinimumWidth(140)
        self.trace_box.activated.connect(self._on_trace_chosen)
        controls.addWidget(self.trace_box)
        controls.addWidget(QtWidgets.QLabel("show last"))
        self.window_box = QtWidgets.QSpinBox()
        self.window_box.setRange(100, self.model.ring.capacity)
        self.window_box.setSingleStep(1000)
        self.window_box.setValue(min(window_tuples, self.model.ring.capacity))
        self.window_box.setSuffix(" tuples")
        self.window_box.valueChanged.connect(self._invalidate)
        controls.addWidget(self.window_box)
        controls.addStretch(1)

        self.plots = pg.GraphicsLayoutWidget()
        self.trace_plot = self.plots.addPlot(row=0, col=0, title="distance per tuple (bin means) with 90% conformal interval")
        self.trace_plot.setLabel("left", "distance", units="nm")
        self.trace_plot.setLabel("bottom", "tuple number (received order)")
        # no grid: pyqtgraph regenerates grid lines whenever the rolling range moves, which cost
        # ~20 ms of painting per frame (more than everything else together)
        self.trace_plot.addLegend(offset=(-10, 10), brush=(0, 0, 0, 190), pen=(90, 90, 90))
        self.lower_curve = self.trace_plot.plot(pen=BOUND_PEN)
        self.upper_curve = self.trace_plot.plot(pen=BOUND_PEN)
        self.band = pg.FillBetweenItem(self.lower_curve, self.upper_curve, brush=BAND_BRUSH)
        self.trace_plot.addItem(self.band)
        self.distance_curve = self.trace_plot.plot(pen=TRACE_PEN, name="distance")
        self._band_legend = pg.BarGraphItem(x=[0], height=[0], width=1, brush=BAND_BRUSH)
        self._band_in_legend = False

        self.hist_plot = self.plots.addPlot(row=0, col=1, title="distance histogram (in view; edge bins: overflow)")
        self.hist_plot.setToolTip("values outside the axis range are counted in the first / last bin")
        self.hist_plot.setLabel("bottom", "distance", units="nm")
        self.hist_plot.setLabel("left", "tuples")
        self.hist_curve = self.hist_plot.plot(stepMode="center", fillLevel=0, brush=(255, 200, 40, 120),
                                              pen=pg.mkPen((255, 200, 40)))
        self.plots.ci.layout.setColumnStretchFactor(0, 3)
        self.plots.ci.layout.setColumnStretchFactor(1, 1)

        self.status = QtWidgets.QLabel()
        font = self.status.font()
        font.setFamily("monospace")
        font.setStyleHint(font.StyleHint.Monospace)
        self.status.setFont(font)
        self.status.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(self.plots, stretch=1)
        layout.addWidget(self.status)

    # -- interaction ----------------------------------------------------------------------
    def _invalidate(self, *_) -> None:
        self._drawn_version = -1

    def _on_trace_chosen(self, index: int) -> None:
        if 0 <= index < len(self._box_traces):
            self.select_trace(self._box_traces[index])

    def _set_trace_items(self, traces: list[int], current: int | None) -> None:
        entries: list[int | None] = [None] + sorted(set(traces) | ({current} if current is not None else set()))
        self.trace_box.blockSignals(True)
        self.trace_box.clear()
        self.trace_box.addItems(["all traces" if t is None else f"trace {t}" for t in entries])
        self._box_traces = entries
        self.trace_box.setCurrentIndex(entries.index(current))
        self.trace_box.blockSignals(False)

    def select_trace(self, trace: int | None) -> None:
        self.model.select_trace(trace)
        if trace not in self._box_traces:
            self._set_trace_items([t for t in self._box_traces if t is not None], trace)
        self.trace_box.setCurrentIndex(self._box_traces.index(trace))
        self._last_counters = -np.inf
        self._invalidate()

    def _update_trace_list(self) -> None:
        traces = self.model.traces()[:200]
        if traces == self._known_traces or self.trace_box.view().isVisible():
            return  # never rebuild the list while the user has it open
        self._known_traces = traces
        self._set_trace_items(traces, self.model.selected_trace)

    # -- frame loop -----------------------------------------------------------------------
    def start(self) -> None:
        self.timer.start()

    def tick(self) -> None:
        """One GUI frame: bounded drain, then redraw what changed."""
        t0 = time.perf_counter()
        if self._last_tick is not None:
            self.frame_intervals.append(t0 - self._last_tick)
        self._last_tick = t0
        if self.source is not None:
            self.source.drain(self.model, self.drain_budget_s)
        self.redraw()
        self.frame_times.append(time.perf_counter() - t0)

    def redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_counters >= self.counters_every_s:
            self._last_counters = now
            self.status.setText(format_counters(self.model.refresh_counters(), self.model.selected_trace,
                                                self.model.hide_flags))
            self._update_trace_list()
        if not force and self.model.version == self._drawn_version:
            return
        self._drawn_version = self.model.version
        window = self.window_box.value()
        curve = self.model.curve(max_points=self.max_points, window=window, band_points=self.band_points)
        self.trace_plot.setLabel("bottom", curve.x_label)
        self.distance_curve.setData(curve.x, curve.distance, connect="finite")
        has_band = bool(np.isfinite(curve.lower).any())
        # bounds are NaN for estimators without calibrated intervals: draw no band then
        empty = np.zeros(0)
        # connect="finite": tuples without an interval (flagged) leave a gap in the band
        self.lower_curve.setData(curve.band_x if has_band else empty, curve.lower if has_band else empty,
                                 connect="finite")
        self.upper_curve.setData(curve.band_x if has_band else empty, curve.upper if has_band else empty,
                                 connect="finite")
        self.band.setVisible(has_band)
        if has_band != self._band_in_legend:
            if has_band:
                self.trace_plot.legend.addItem(self._band_legend, "90% interval")
            else:
                self.trace_plot.legend.removeItem(self._band_legend)
            self._band_in_legend = has_band
        per = f"mean of {curve.per_point} per point" if curve.per_point > 1 else "1 per point"
        band = f", band {curve.band_per_point} per point" if has_band and curve.band_per_point > 1 else ""
        self.trace_plot.setTitle(f"distance with 90% conformal interval: last {curve.n_tuples:,} tuples, {per}{band}")
        edges, counts = self.model.histogram(window=window)
        self.hist_curve.setData(edges, counts)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.timer.stop()
        super().closeEvent(event)
