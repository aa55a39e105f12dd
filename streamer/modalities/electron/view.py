"""Electron monitor view: the counted image building up, and the knob curve.

The counted image bins entry points at ``upsample`` x the pixel resolution (super-resolved
counting); only detections whose score (= 90% radius) is at or below the knob are counted.
The knob curve shows, for the recent detections, the fraction kept vs the mean predicted radius
of those kept (the model's own expected error; truth is not available live).
State lives in the Qt-free :class:`ElectronViewModel` (tested headless); Qt is imported in ``widget``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ElectronViewModel:
    """Ring of recent detections (x, y, score) + the counted image at the current knob."""

    def __init__(self, capacity: int = 500_000, upsample: int = 4, max_side: int = 4096) -> None:
        self.capacity, self.upsample, self.max_side = int(capacity), int(upsample), int(max_side)
        self.xy = np.zeros((self.capacity, 2), np.float32)
        self.score = np.zeros(self.capacity, np.float32)
        self.total = 0  # detections ever ingested
        self.frames = 0
        self.knob = np.inf
        self.image = np.zeros((1, 1), np.float32)
        self.version = 0

    def ingest_results(self, results: list[dict[str, Any]]) -> None:
        xs, ys, ss = [], [], []
        for r in results:
            if r.get("x") is None:
                continue
            self.frames += int(r.get("n", 0))
            xs.append(np.asarray(r["x"], np.float32).ravel())
            ys.append(np.asarray(r["y"], np.float32).ravel())
            s = r.get("score")
            ss.append(np.zeros(len(xs[-1]), np.float32) if s is None else np.asarray(s, np.float32).ravel())
        if not xs:
            return
        self.ingest(np.concatenate(xs), np.concatenate(ys), np.concatenate(ss))

    def ingest(self, x: np.ndarray, y: np.ndarray, score: np.ndarray) -> None:
        n = len(x)
        if n == 0:
            return
        score = np.where(np.isfinite(score), score, 0.0)  # baselines send NaN: always counted
        idx = (self.total + np.arange(n)) % self.capacity
        self.xy[idx, 0], self.xy[idx, 1], self.score[idx] = x, y, score
        self.total += n
        self._accumulate(x, y, score)
        self.version += 1

    def _accumulate(self, x, y, score) -> None:
        keep = score <= self.knob
        u = self.upsample
        ix = np.floor((x[keep] + 0.5) * u).astype(np.int64)
        iy = np.floor((y[keep] + 0.5) * u).astype(np.int64)
        ok = (ix >= 0) & (iy >= 0)
        ix, iy = ix[ok], iy[ok]
        if len(ix) == 0:
            return
        need = (min(int(iy.max()) + 1, self.max_side), min(int(ix.max()) + 1, self.max_side))
        if need[0] > self.image.shape[0] or need[1] > self.image.shape[1]:
            grown = np.zeros((max(need[0], self.image.shape[0]), max(need[1], self.image.shape[1])), np.float32)
            grown[:self.image.shape[0], :self.image.shape[1]] = self.image
            self.image = grown
        ok = (ix < self.image.shape[1]) & (iy < self.image.shape[0])
        np.add.at(self.image, (iy[ok], ix[ok]), 1.0)

    def set_knob(self, cut: float) -> None:
        """Recount the image from the recent detections with the new cut (older ones are gone)."""
        self.knob = float(cut)
        self.image = np.zeros_like(self.image)
        n = min(self.total, self.capacity)
        self._accumulate(self.xy[:n, 0], self.xy[:n, 1], self.score[:n])
        self.version += 1

    def knob_curve(self, points: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fraction kept, mean score of kept, cut) over cuts at score quantiles."""
        n = min(self.total, self.capacity)
        if n == 0:
            z = np.zeros(0)
            return z, z, z
        s = np.sort(self.score[:n])
        k = np.unique(np.clip(np.linspace(n / points, n, points).astype(int), 1, n))
        return k / n, np.cumsum(s)[k - 1] / k, s[k - 1]


class ElectronView:
    """Counted image + knob curve for the monitor shell (options: ``upsample``, ``capacity``, ``knob``)."""

    title = "Electron counting"

    def __init__(self, *, upsample: int = 4, capacity: int = 500_000, knob: float | None = None,
                 pixel_um: float = 5.0, **_ignored: Any) -> None:
        self.model = ElectronViewModel(capacity=capacity, upsample=upsample)
        if knob is not None:
            self.model.knob = float(knob)
        self.pixel_um = pixel_um
        self._widget = None
        self._drawn = -1

    def ingest(self, results: list[dict[str, Any]]) -> None:
        self.model.ingest_results(results)

    def widget(self):
        if self._widget is None:
            self._build()
        return self._widget

    def _build(self) -> None:
        import pyqtgraph as pg
        from pyqtgraph.Qt import QtWidgets

        w = QtWidgets.QWidget()
        lay = QtWidgets.QGridLayout(w)
        self.img_plot = pg.PlotWidget(title="counted image (entry points)")
        self.img_plot.setAspectLocked(True)
        self.img = pg.ImageItem(axisOrder="row-major")
        self.img_plot.addItem(self.img)
        self.curve_plot = pg.PlotWidget(title="knob: kept fraction vs mean 90% radius (um)")
        self.curve_plot.setLabel("bottom", "fraction of detections kept")
        self.curve_plot.setLabel("left", "mean radius of kept (um)")
        self.curve = self.curve_plot.plot([], [], pen=pg.mkPen((255, 200, 40), width=2))
        self.knob_box = QtWidgets.QDoubleSpinBox()
        self.knob_box.setRange(0.0, 1000.0)
        self.knob_box.setSingleStep(0.05)
        self.knob_box.setSpecialValueText("knob off (all)")
        self.knob_box.setValue(0.0 if not np.isfinite(self.model.knob) else self.model.knob * self.pixel_um)
        self.knob_box.valueChanged.connect(lambda v: self.model.set_knob(v / self.pixel_um if v > 0 else np.inf))
        self.info = QtWidgets.QLabel("")
        lay.addWidget(self.img_plot, 0, 0, 2, 1)
        lay.addWidget(self.curve_plot, 0, 1)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("knob: max radius (um)"))
        row.addWidget(self.knob_box)
        row.addWidget(self.info)
        lay.addLayout(row, 1, 1)
        self._widget = w

    def refresh(self, force: bool = False) -> None:
        if self._widget is None or (not force and self.model.version == self._drawn):
            return
        self._drawn = self.model.version
        m = self.model
        self.img.setImage(m.image, autoLevels=True)
        frac, mean, _ = m.knob_curve()
        self.curve.setData(frac, mean * self.pixel_um)
        self.info.setText(f"{m.total:,} electrons in {m.frames:,} frames; counted at knob: {int(m.image.sum()):,}")
