"""The MINFLUX monitor view: rolling distance trace with the 90% interval band, and a histogram;
with the self-calibrating predictor also the photon trace coloured by segmented state, the live
calibration, and the selected trace's answer merged over every worker's partial sums.

Hosted by the monitor shell (:mod:`streamer.monitor.window`, which owns the subscription, the
frame timer and the rates/lag/errors panel); it follows the ``View`` protocol of
:mod:`streamer.core.modality`: ``title``, ``widget()``, ``ingest(results)``, ``refresh()``.
The state lives in the Qt-free :class:`~.view_model.MinfluxViewModel`; Qt is imported only when
the widget is built, so ``ingest`` works (and is tested) headless.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .prediction import FLAG_LOW_PHOTONS, FLAG_NOT_TWO_ON
from .view_model import FLAG_NAMES, Instrument, MinfluxViewModel, ViewSummary

BAND_BRUSH = (80, 160, 255, 70)
TRACE_RGB = (255, 200, 40)
BOUND_RGBA = (80, 160, 255, 160)
STATE_RGB = {"2-on": TRACE_RGB, "1-on": (80, 160, 255), "background": (150, 150, 150)}


def format_instrument(s: Instrument) -> str:
    """The instrument line: live calibration (as the newest tuple used it, and merged over all
    workers) and the selected trace's merged answer."""
    if not np.isfinite(s.v0_live):
        return ""

    def pm(v, se, fmt):
        return ("n/a" if not np.isfinite(v) else f"{v:{fmt}}" + (f" +- {se:.2g}" if np.isfinite(se) else ""))

    line = (f"instrument, stream {s.stream!r}: v0 {pm(s.v0, s.v0_se, '.4f')}, background "
            f"{pm(s.background, s.background_se, '.3f')} counts/exposure (all workers' tuples"
            f"{'' if s.calibrated else '; not yet calibrated: prior used'}); newest tuple used v0 {s.v0_live:.4f}, "
            f"b {s.background_live:.3f}")
    if s.trace is not None:
        if np.isfinite(s.trace_distance):
            iv = (f" [{s.trace_lower:.2f}, {s.trace_upper:.2f}]" if np.isfinite(s.trace_lower) else " (interval: too few blocks)")
            line += f"\ntrace {s.trace}: {s.trace_distance:.2f} nm{iv} from {s.trace_two_on:,} 2-on tuples (all workers)"
        else:
            line += f"\ntrace {s.trace}: no 2-on tuples yet"
    return line


def format_summary(s: ViewSummary, selected: int | None, hidden_flags: int = 0) -> str:
    """The view's info line: what is in view, flags in view, mean interval width."""
    flagged = "  ".join(f"{k} {v:,}" for k, v in s.flag_counts.items() if v)
    hidden = ", ".join(name for bit, name in FLAG_NAMES.items() if bit & hidden_flags)
    width = "n/a" if not np.isfinite(s.mean_width_nm) else f"{s.mean_width_nm:.2f} nm"
    return (f"view: {'all traces' if selected is None else f'trace {selected}'} ({s.tuples:,} tuples kept)   "
            f"flags in view: {flagged or 'none'}" + (f" ({hidden}: counted, not drawn)" if hidden else "")
            + f"   90% interval mean width: {width}")


class MinfluxView:
    """Distance trace + interval band + histogram for the monitor shell.

    Options (``streamer monitor`` passes its own; unknown ones are ignored): ``capacity`` (tuples
    kept), ``window`` (tuples shown initially), ``max_points`` / ``band_points`` (points drawn per
    curve: bin means), ``trace`` (trace id selected at start), ``show_flagged`` (also draw
    low-photon and not-2-on tuples; they are always counted), ``hist_range_nm``, ``hist_bin_nm``.
    """

    title = "MINFLUX distance"

    def __init__(self, *, capacity: int = 200_000, window: int = 50_000, max_points: int = 1000,
                 band_points: int = 300, trace: int | None = None, show_flagged: bool = False,
                 hist_range_nm: tuple[float, float] = (0.0, 60.0), hist_bin_nm: float = 0.5,
                 **_ignored: Any) -> None:
        capacity = int(capacity)
        hide = 0 if show_flagged else FLAG_LOW_PHOTONS | FLAG_NOT_TWO_ON
        self.model = MinfluxViewModel(capacity=capacity, trace_capacity=capacity, hist_range_nm=hist_range_nm,
                                      hist_bin_nm=hist_bin_nm, hide_flags=hide)
        self.window_tuples = max(1, min(int(window), capacity))
        self.max_points, self.band_points = int(max_points), int(band_points)
        self.info_every_s = 0.25  # the info line and the trace list are rewritten at most this often
        self._widget = None
        self._drawn_version = -1
        self._last_info = -np.inf
        self._known_traces: list[int] = []
        self._box_traces: list[int | None] = []
        if trace is not None:
            self.model.select_trace(trace)

    # -- View protocol --------------------------------------------------------------------
    def ingest(self, results: list[dict[str, Any]]) -> None:
        """One frame's decoded MINFLUX result dicts, oldest first."""
        self.model.ingest_results(results)

    def widget(self):
        if self._widget is None:
            self._build()
        return self._widget

    def refresh(self, force: bool = False) -> None:
        """Redraw when something changed (cheap no-op otherwise); before ``widget()``: nothing."""
        if self._widget is None:
            return
        now = time.monotonic()
        if force or now - self._last_info >= self.info_every_s:
            self._last_info = now
            self.info.setText(format_summary(self.model.summary(), self.model.selected_trace, self.model.hide_flags))
            inst = format_instrument(self.model.instrument())
            self.instrument_label.setText(inst)
            self.instrument_label.setVisible(bool(inst))
            self._update_trace_list()
        if not force and self.model.version == self._drawn_version:
            return
        self._drawn_version = self.model.version
        self._draw()

    # -- layout ---------------------------------------------------------------------------
    def _build(self) -> None:
        import pyqtgraph as pg
        from pyqtgraph.Qt import QtWidgets

        self._pg = pg
        root = QtWidgets.QWidget()
        controls = QtWidgets.QHBoxLayout()
        controls.addWidget(QtWidgets.QLabel("trace:"))
        self.trace_box = QtWidgets.QComboBox()
        # combo index -> trace id (None: all traces), kept in Python rather than as Qt item data
        self._set_trace_items([], self.model.selected_trace)
        self.trace_box.setMinimumWidth(140)
        self.trace_box.activated.connect(self._on_trace_chosen)
        controls.addWidget(self.trace_box)
        controls.addWidget(QtWidgets.QLabel("show last"))
        self.window_box = QtWidgets.QSpinBox()
        self.window_box.setRange(min(100, self.model.ring.capacity), self.model.ring.capacity)
        self.window_box.setSingleStep(1000)
        self.window_box.setValue(self.window_tuples)
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
        bound_pen = pg.mkPen(BOUND_RGBA, width=1)
        self.lower_curve = self.trace_plot.plot(pen=bound_pen)
        self.upper_curve = self.trace_plot.plot(pen=bound_pen)
        self.band = pg.FillBetweenItem(self.lower_curve, self.upper_curve, brush=BAND_BRUSH)
        self.trace_plot.addItem(self.band)
        self.distance_curve = self.trace_plot.plot(pen=pg.mkPen(TRACE_RGB, width=1.5), name="distance")
        self._band_legend = pg.BarGraphItem(x=[0], height=[0], width=1, brush=BAND_BRUSH)
        self._band_in_legend = False

        self.hist_plot = self.plots.addPlot(row=0, col=1, title="distance histogram (in view; edge bins: overflow)")
        self.hist_plot.setToolTip("values outside the axis range are counted in the first / last bin")
        self.hist_plot.setLabel("bottom", "distance", units="nm")
        self.hist_plot.setLabel("left", "tuples")
        self.hist_curve = self.hist_plot.plot(stepMode="center", fillLevel=0, brush=(*TRACE_RGB, 120),
                                              pen=pg.mkPen(TRACE_RGB))
        self.plots.ci.layout.setColumnStretchFactor(0, 3)
        self.plots.ci.layout.setColumnStretchFactor(1, 1)
        # the self-calibrating predictor's segmentation, under the distance trace (same x)
        self.state_plot = self.plots.addPlot(row=1, col=0, title="photons per tuple by segmented state")
        self.state_plot.setLabel("left", "photons")
        self.state_plot.setXLink(self.trace_plot)
        self.state_plot.addLegend(offset=(-10, 5), brush=(0, 0, 0, 190), pen=(90, 90, 90), colCount=3)
        self.state_curves = {name: self.state_plot.plot(pen=pg.mkPen(rgb, width=1.5), name=name)
                             for name, rgb in STATE_RGB.items()}
        self.plots.ci.layout.setRowStretchFactor(0, 3)
        self.plots.ci.layout.setRowStretchFactor(1, 1)
        self._state_shown = True

        self.info = QtWidgets.QLabel()
        self.instrument_label = QtWidgets.QLabel()
        self.instrument_label.setVisible(False)
        layout = QtWidgets.QVBoxLayout(root)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(controls)
        layout.addWidget(self.plots, stretch=1)
        layout.addWidget(self.instrument_label)
        layout.addWidget(self.info)
        self._widget = root

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
        """Show one trace (None: all traces)."""
        self.model.select_trace(trace)
        if self._widget is not None:
            if trace not in self._box_traces:
                self._set_trace_items([t for t in self._box_traces if t is not None], trace)
            self.trace_box.setCurrentIndex(self._box_traces.index(trace))
            self._last_info = -np.inf  # info line on the next refresh
        self._invalidate()

    def _update_trace_list(self) -> None:
        traces = self.model.traces()[:200]
        if traces == self._known_traces or self.trace_box.view().isVisible():
            return  # never rebuild the list while the user has it open
        self._known_traces = traces
        self._set_trace_items(traces, self.model.selected_trace)

    # -- drawing --------------------------------------------------------------------------
    def _draw(self) -> None:
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
        has_states = self.model.has_states()
        if has_states != self._state_shown:  # only results that carry a segmentation get the row
            self.state_plot.setVisible(has_states)
            self.plots.ci.layout.setRowStretchFactor(1, 1 if has_states else 0)
            self.plots.ci.layout.setRowMaximumHeight(1, 1e6 if has_states else 0)
            self._state_shown = has_states
        if has_states:
            sc = self.model.state_curve(max_points=self.max_points, window=window)
            for name, c in self.state_curves.items():
                self.state_curves[name].setData(sc.x, sc.photons[name], connect="finite")
