"""Monitor view: D of each stack vs acquisition time with its 90 % interval, and a histogram of log10 D.

``ingest`` is Qt-free (bounded numpy rings); Qt/pyqtgraph are imported in ``widget`` only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HIST_EDGES = np.linspace(-3, 2, 51)  # log10 D, um^2/s


class DiffusionView:
    title = "diffusion: D per stack"

    def __init__(self, capacity: int = 20000, shown_intervals: int = 400, **_: Any) -> None:
        self.capacity = int(capacity)
        self.shown_intervals = int(shown_intervals)
        self.t = np.zeros(0)
        self.d = np.zeros(0, np.float32)
        self.lo = np.zeros(0, np.float32)
        self.hi = np.zeros(0, np.float32)
        self.hist = np.zeros(len(HIST_EDGES) - 1, np.int64)  # since the view started (not bounded by the ring)
        self._t0: float | None = None
        self._plots = None
        self._dirty = False

    # -- Qt-free ----------------------------------------------------------------------------
    def ingest(self, results: list[dict[str, Any]]) -> None:
        ts, ds, los, his = [], [], [], []
        for r in results:
            d = r.get("D")
            if d is None:
                continue
            d = np.asarray(d, np.float32).ravel()
            t = float(r.get("t_acq", 0.0))
            if self._t0 is None:
                self._t0 = t
            ts.append(np.full(len(d), t - self._t0))
            ds.append(d)
            los.append(np.asarray(r.get("D_lo", d), np.float32).ravel())
            his.append(np.asarray(r.get("D_hi", d), np.float32).ravel())
        if not ds:
            return
        d = np.concatenate(ds)
        self.hist += np.histogram(np.log10(np.maximum(d, 1e-6)), HIST_EDGES)[0]
        cap = self.capacity
        self.t = np.concatenate([self.t, *ts])[-cap:]
        self.d = np.concatenate([self.d, d])[-cap:]
        self.lo = np.concatenate([self.lo, *los])[-cap:]
        self.hi = np.concatenate([self.hi, *his])[-cap:]
        self._dirty = True

    # -- Qt ---------------------------------------------------------------------------------
    def widget(self):
        import pyqtgraph as pg

        w = pg.GraphicsLayoutWidget()
        p1 = w.addPlot(row=0, col=0, title="D (um^2/s) per stack, 90 % intervals of the newest")
        p1.setLogMode(y=True)
        p1.setLabel("bottom", "acquisition time (s)")
        scatter = pg.ScatterPlotItem(size=3, pen=None, brush=pg.mkBrush(80, 160, 255, 120))
        bars = pg.ErrorBarItem(pen=pg.mkPen(200, 200, 200, 80))
        p1.addItem(bars)
        p1.addItem(scatter)
        p2 = w.addPlot(row=0, col=1, title="histogram of log10 D")
        p2.setLabel("bottom", "log10 D (um^2/s)")
        curve = p2.plot(HIST_EDGES, np.zeros(len(HIST_EDGES) - 1), stepMode="center", fillLevel=0,
                        brush=(80, 160, 255, 120))
        self._plots = (scatter, bars, curve)
        return w

    def refresh(self, force: bool = False) -> None:
        if self._plots is None or not (self._dirty or force):
            return
        scatter, bars, curve = self._plots
        y = np.log10(np.maximum(self.d, 1e-6))  # log-mode axes take log10 data
        scatter.setData(self.t, y)
        k = min(self.shown_intervals, len(self.d))
        if k:
            yk = y[-k:]
            bars.setData(x=self.t[-k:], y=yk, top=np.log10(np.maximum(self.hi[-k:], 1e-6)) - yk,
                         bottom=yk - np.log10(np.maximum(self.lo[-k:], 1e-6)))
        curve.setData(HIST_EDGES, self.hist.astype(float))
        self._dirty = False
