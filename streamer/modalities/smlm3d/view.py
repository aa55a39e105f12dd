"""Monitor view: the live super-resolution render (2D histogram of kept localizations, coloured by z)
and the localization rate.

The render is accumulated in fixed bins (``render_nm``, 20 nm by default) as photon-weight-free
counts per z slab; drawing maps each bin's mean z to a colour (blue = -750 nm ... red = +750 nm)
and its count to brightness. All state is numpy and bounded (one image, a short rate history),
so the view is testable without Qt (:class:`RenderModel`) and a monitor left open does not grow.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from .localize import REJECTED

Z_MIN, Z_MAX = -750.0, 750.0


class RenderModel:
    """Qt-free accumulation: counts and summed z per render bin, rate of kept localizations."""

    def __init__(self, field_nm: float = 6400.0, render_nm: float = 20.0, rate_window_s: float = 2.0,
                 clock=time.monotonic) -> None:
        self.render_nm = render_nm
        self.bins = int(np.ceil(field_nm / render_nm))
        self.count = np.zeros((self.bins, self.bins), np.float32)
        self.zsum = np.zeros((self.bins, self.bins), np.float32)
        self.total = 0
        self.frames = 0
        self.version = 0
        self._arrivals: deque[tuple[float, int]] = deque()
        self._window = rate_window_s
        self._clock = clock

    def ingest(self, results: list[dict[str, Any]]) -> None:
        for r in results:
            if "x" not in r:
                continue
            flags = np.asarray(r.get("flags", np.zeros(len(r["x"]), np.uint8)))
            keep = (flags & REJECTED) == 0
            x, y, z = (np.asarray(r[k], np.float64)[keep] for k in ("x", "y", "z"))
            ix = np.floor(x / self.render_nm).astype(np.int64)
            iy = np.floor(y / self.render_nm).astype(np.int64)
            ok = (ix >= 0) & (ix < self.bins) & (iy >= 0) & (iy < self.bins)
            flat = iy[ok] * self.bins + ix[ok]
            n = self.bins * self.bins
            self.count += np.bincount(flat, minlength=n).reshape(self.bins, self.bins).astype(np.float32)
            self.zsum += np.bincount(flat, z[ok], minlength=n).reshape(self.bins, self.bins).astype(np.float32)
            k = int(ok.sum())
            self.total += k
            self.frames += int(r.get("n", 0))
            self._arrivals.append((self._clock(), k))
        self.version += 1

    def rate(self) -> float:
        """Kept localizations per second over the recent window."""
        now = self._clock()
        while self._arrivals and now - self._arrivals[0][0] > self._window:
            self._arrivals.popleft()
        if len(self._arrivals) < 2:
            return 0.0
        span = max(now - self._arrivals[0][0], 1e-3)
        return sum(k for _, k in self._arrivals) / span

    def rgb(self) -> np.ndarray:
        """(bins, bins, 3) uint8 image: hue from mean z, brightness from counts (saturating)."""
        c = self.count
        zm = np.where(c > 0, self.zsum / np.maximum(c, 1), 0.0)
        t = np.clip((zm - Z_MIN) / (Z_MAX - Z_MIN), 0, 1)
        # blue -> cyan -> green -> yellow -> red
        r = np.clip(1.5 - np.abs(4 * t - 3), 0, 1)
        g = np.clip(1.5 - np.abs(4 * t - 2), 0, 1)
        b = np.clip(1.5 - np.abs(4 * t - 1), 0, 1)
        top = np.percentile(c[c > 0], 99) if (c > 0).any() else 1.0
        v = np.clip(c / max(top, 1.0), 0, 1) ** 0.6
        return (np.stack([r, g, b], -1) * v[..., None] * 255).astype(np.uint8)


class SMLM3DView:
    """pyqtgraph widget hosting the render and a status line."""

    title = "3D SMLM: live render (colour = z)"

    def __init__(self, field_nm: float = 6400.0, render_nm: float = 20.0, **_: Any) -> None:
        self.model = RenderModel(field_nm, render_nm)
        self._widget = None
        self._drawn = -1

    def ingest(self, results: list[dict[str, Any]]) -> None:
        self.model.ingest(results)

    def widget(self):
        if self._widget is None:
            self._build()
        return self._widget

    def _build(self) -> None:
        import pyqtgraph as pg
        from pyqtgraph.Qt import QtWidgets

        root = QtWidgets.QWidget()
        lay = QtWidgets.QVBoxLayout(root)
        self.info = QtWidgets.QLabel("waiting for localizations")
        lay.addWidget(self.info)
        self.plot = pg.PlotWidget()
        self.plot.setAspectLocked(True)
        self.plot.invertY(True)
        for side, name in (("bottom", "x (nm)"), ("left", "y (nm)")):
            self.plot.getAxis(side).enableAutoSIPrefix(False)
            self.plot.setLabel(side, name)
        self.img = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.img)
        self.plot.getViewBox().setBackgroundColor("k")
        lay.addWidget(self.plot)
        bar = QtWidgets.QLabel("z:  <span style='color:#3050ff'>-750 nm</span> &#8594; "
                               "<span style='color:#30ff60'>0</span> &#8594; "
                               "<span style='color:#ff3030'>+750 nm</span>")
        lay.addWidget(bar)
        self._widget = root

    def refresh(self, force: bool = False) -> None:
        if self._widget is None or (not force and self._drawn == self.model.version):
            return
        self._drawn = self.model.version
        m = self.model
        self.img.setImage(m.rgb(), autoLevels=False, levels=(0, 255))
        size = m.bins * m.render_nm
        self.img.setRect(0, 0, size, size)  # after setImage: nm coordinates, origin top-left
        self.info.setText(f"{m.total:,} localizations from {m.frames:,} frames   "
                          f"{m.rate():,.0f} localizations/s   render {m.render_nm:g} nm bins")
