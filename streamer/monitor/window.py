"""The monitor shell window (pyqtgraph/Qt): the watched modality's view plus a status panel.

One QTimer drives everything on the GUI thread: drain the subscriber for at most a fixed time
budget (results go to the state, which hands the watched modality's results to the view), then
let the view redraw and, a few times a second, rewrite the status panel. Draining is bounded, so
a burst of results costs display frames, never GUI responsiveness; ZeroMQ drops what the monitor
does not read at its receive high-water mark, so the pipeline never waits for the monitor.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections import deque
from typing import Any, Protocol

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from .state import NOTICES, Counters, MonitorState


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
    """What feeds the window: drains pending messages into the state within a time budget."""

    def drain(self, target: MonitorState, budget_s: float) -> int: ...


def _fmt_rate(x: float) -> str:
    return f"{x / 1e3:,.1f} k/s" if x >= 1e3 else f"{x:,.0f} /s"


def _fmt_num(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt_num(x)}" for k, x in v.items()) + "}"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def format_counters(c: Counters, modality: str | None = None) -> str:
    """Plain-text status panel (monospace), one fact per line."""
    p = c.pipeline
    other = f" (+{c.other_messages:,} of other modalities, not shown)" if c.other_messages else ""
    dets = f", {c.detections:,} {c.detection_noun}" if c.detections else ""
    lines = [
        f"received   : {c.items:,} items{dets} in {c.messages:,} result messages{other}"
        + (f"  [{modality}]" if modality else ""),
        f"rate       : {_fmt_rate(c.rate)} items at monitor",
    ]
    if c.latency_ms:
        lines.append(f"display lag: p50 {c.latency_ms['p50']:.1f} ms  p99 {c.latency_ms['p99']:.1f} ms "
                     "(acquisition -> newest result on screen, last ~10 s)")
    lines.append(f"not shown  : {c.missed_messages:,} result messages skipped by the monitor (display only)"
                 + (f"; {c.undecodable:,} undecodable" if c.undecodable else "")
                 + (f"; {c.duplicate_messages:,} duplicates" if c.duplicate_messages else ""))
    if p:
        lines.append("pipeline   : " + "  ".join(f"{k} {_fmt_num(v)}" for k, v in p.items()) + "  (sink statistics)")
    rejections = {k: v for k, v in c.errors_by_reason.items() if k not in NOTICES}
    notices = {k: v for k, v in c.errors_by_reason.items() if k in NOTICES}
    by_reason = "  ".join(f"{k} {v:,}" for k, v in sorted(rejections.items(), key=lambda kv: -kv[1])[:6])
    lines.append(f"rejected   : {c.rejected:,} malformed packets" + (f" ({by_reason})" if by_reason else "")
                 + ("  notices: " + "  ".join(f"{k} {v:,}" for k, v in notices.items()) if notices else "")
                 + (f"  last: {c.last_error}" if c.last_error else ""))
    if c.flag_counts:
        flagged = "  ".join(f"{k} {v:,}" for k, v in c.flag_counts.items() if v)
        lines.append(f"flags      : {flagged or 'none'} (since start)")
    if c.model_ids:
        lines.append(f"model      : {', '.join(c.model_ids)}")
    return "\n".join(lines)


class MonitorWindow(QtWidgets.QWidget):
    """Live view of a result stream: ``view`` (a modality's :class:`~streamer.core.modality.View`)
    above the shell's status panel. ``source`` may be None (feed ``state`` directly, e.g. in tests).
    The state's ``view`` is set to ``view`` when it has none."""

    def __init__(self, state: MonitorState, view: Any, source: Source | None = None, *, frame_ms: int = 50,
                 drain_budget_s: float = 0.012, counters_every_s: float = 0.25, title: str | None = None) -> None:
        check_qt_binding()
        super().__init__()
        self.state, self.view, self.source = state, view, source
        if state.view is None:
            state.view = view
        self.drain_budget_s = drain_budget_s
        self.counters_every_s = counters_every_s
        self.frame_times: deque[float] = deque(maxlen=10_000)  # seconds per GUI tick (drain + redraw)
        self.frame_intervals: deque[float] = deque(maxlen=10_000)  # seconds between ticks (incl. painting)
        self._last_tick: float | None = None
        self._last_counters = -np.inf
        self.setWindowTitle(title or f"{getattr(view, 'title', 'streamer')} monitor")

        self.status = QtWidgets.QLabel()
        font = self.status.font()
        font.setFamily("monospace")
        font.setStyleHint(font.StyleHint.Monospace)
        self.status.setFont(font)
        self.status.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        try:  # a view may take refresh(force=True) (redraw even when nothing changed)
            self._view_force = "force" in inspect.signature(view.refresh).parameters
        except (TypeError, ValueError):
            self._view_force = False
        self.host = view.widget()  # the view's own widget; the shell only hosts it
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.host, stretch=1)
        layout.addWidget(self.status)

        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(frame_ms)
        self.timer.timeout.connect(self.tick)

    def start(self) -> None:
        self.timer.start()

    def tick(self) -> None:
        """One GUI frame: bounded drain, then redraw what changed."""
        t0 = time.perf_counter()
        if self._last_tick is not None:
            self.frame_intervals.append(t0 - self._last_tick)
        self._last_tick = t0
        if self.source is not None:
            self.source.drain(self.state, self.drain_budget_s)
        self.redraw()
        self.frame_times.append(time.perf_counter() - t0)

    def redraw(self, force: bool = False) -> None:
        """The view redraws (it skips work when nothing changed); the panel a few times a second."""
        if force and self._view_force:
            self.view.refresh(force=True)
        else:
            self.view.refresh()
        now = time.monotonic()
        if force or now - self._last_counters >= self.counters_every_s:
            self._last_counters = now
            self.status.setText(format_counters(self.state.refresh_counters(), self.state.modality))

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.timer.stop()
        super().closeEvent(event)
