"""Regenerate docs/smlm3d/render.png: the smlm3d monitor view fed with real predictor results.

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/smlm3d/view_screenshot.py [--frames 4000]

Simulates structure frames (three-helix filaments, 5k photons / 50 bg, 2 emitters/frame), runs the
default predictor (compiled trees) packet by packet and hands each packet's result dict to the view
exactly as the monitor shell does (``view.ingest([result])``), then saves the widget.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from streamer.modalities.smlm3d.predictors import TreesPredictor  # noqa: E402
from streamer.modalities.smlm3d.simulate import SimConfig, simulate_frames  # noqa: E402
from streamer.modalities.smlm3d.view import SMLM3DView  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=4000)
    ap.add_argument("--packet", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "docs" / "smlm3d" / "render.png"))
    a = ap.parse_args()
    frames, _ = simulate_frames(SimConfig(n_frames=a.frames, photons=5000, background=50, density=2.0,
                                          sampling="structure", structure_every=a.frames, seed=11))
    pred = TreesPredictor("trees-structure", kind="auto")
    import pyqtgraph as pg

    app = pg.mkQApp()
    view = SMLM3DView()
    w = view.widget()
    w.resize(720, 800)
    for s in range(0, a.frames, a.packet):
        out = pred.predict_frames(frames[s:s + a.packet])
        n = min(a.packet, a.frames - s)
        view.ingest([{"modality": "smlm3d", "seq": s // a.packet, "n": n, "m": len(out["x"]), **out}])
    view.refresh(force=True)
    w.show()
    app.processEvents()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    w.grab().save(a.out)
    print(f"wrote {a.out}: {view.model.total:,} localizations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
