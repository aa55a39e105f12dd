"""Helpers of bench/bench_pipeline.py: peak-RSS sampling, RESULTS.md sections, the plot."""

from __future__ import annotations

import math
import os
import resource
import threading
from pathlib import Path


def vm_hwm_mib(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process in MiB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (from /proc/<pid>/stat), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def self_peak_rss_mib() -> float:
    """Peak RSS of this process (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRSS:
    """Samples VmHWM of named processes every ``period_s`` until stopped (VmHWM is already the
    peak, so the last read before a process exits is its peak up to the last period)."""

    def __init__(self, period_s: float = 0.1) -> None:
        self.period_s = period_s
        self.pids: dict[str, int] = {}
        self.peak: dict[str, float] = {}
        self.cpu_s: dict[str, float] = {}  # CPU seconds at the last sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def _sample(self) -> None:
        for name, pid in list(self.pids.items()):
            v = vm_hwm_mib(pid)
            if v is not None:
                self.peak[name] = max(self.peak.get(name, 0.0), v)
            cpu = cpu_seconds(pid)
            if cpu is not None:
                self.cpu_s[name] = cpu

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()


def plot(results: dict, path: Path) -> None:
    """Throughput and latency vs packet size (per worker count) and backend throughput, as one PNG."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import numpy as np
    import pyqtgraph as pg

    app = pg.mkQApp()  # noqa: F841 (needed by the widgets)
    pg.setConfigOptions(antialias=True, background="w", foreground="k")
    win = pg.GraphicsLayoutWidget()
    win.resize(1500, 480)
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]

    grid = results.get("throughput", [])
    def log_plot(col: int, title: str, ylabel: str):
        p = win.addPlot(row=0, col=col, title=title)
        p.setLogMode(x=True, y=True)
        p.setLabel("bottom", "packet size (tuples)")
        p.setLabel("left", ylabel)
        p.showGrid(x=True, y=True, alpha=0.3)
        p.addLegend()
        return p

    p1 = log_plot(0, "end-to-end throughput (replay, as fast as possible)", "tuples/s")
    p2 = log_plot(1, "latency t_acq -> sink (as fast as possible)", "latency (ms)")
    sizes = sorted({r["packet_size"] for r in grid})
    for p in (p1, p2):  # log-mode axes are in log10 units: label the measured packet sizes only
        p.getAxis("bottom").setTicks([[(math.log10(s), f"{s:,}") for s in sizes], []])
    for i, w in enumerate(sorted({r["workers"] for r in grid})):
        rows = sorted((r for r in grid if r["workers"] == w and "tuples_per_s" in r), key=lambda r: r["packet_size"])
        if not rows:
            continue
        x = np.array([r["packet_size"] for r in rows], float)
        c = colours[i % len(colours)]
        p1.plot(x, [r["tuples_per_s"] for r in rows], pen=pg.mkPen(c, width=2), symbol="o", symbolBrush=c,
                name=f"{w} worker{'s' if w > 1 else ''}")
        p2.plot(x, [r["latency_ms"]["p50"] for r in rows], pen=pg.mkPen(c, width=2), symbol="o", symbolBrush=c,
                name=f"p50, {w} w")
        p2.plot(x, [r["latency_ms"]["p99"] for r in rows], pen=pg.mkPen(c, width=2, style=pg.QtCore.Qt.PenStyle.DashLine),
                symbol="t", symbolBrush=c, name=f"p99, {w} w")

    backends = [b for b in results.get("backends", []) if "in_process_tuples_per_s" in b]
    p3 = win.addPlot(row=0, col=2, title="backends on identical data (tuples/s, log)")
    p3.setLogMode(y=True)
    p3.showGrid(y=True, alpha=0.3)
    p3.addLegend()
    if backends:
        x = np.arange(len(backends))
        inproc = np.log10([b["in_process_tuples_per_s"] for b in backends])
        pipe = np.log10([b.get("pipeline", {}).get("tuples_per_s", 1.0) for b in backends])
        p3.addItem(pg.BarGraphItem(x=x - 0.18, height=inproc, width=0.34, brush=colours[0], name="1 core, in process"))
        p3.addItem(pg.BarGraphItem(x=x + 0.18, height=pipe, width=0.34, brush=colours[2], name="pipeline end to end"))
        p3.getAxis("bottom").setTicks([[(i, b["label"]) for i, b in enumerate(backends)]])
        p3.setLabel("left", "tuples/s")
    win.show()
    app.processEvents()
    win.grab().save(str(path))
    win.close()
