"""Predictor throughput on one core: frames/s of 64x64 frames at 2 emitters/frame (5k/50).

    .venv/bin/python bench/smlm3d/bench_predictors.py [--frames 2000] [--packet 100] [--write]

Compares the MLE baseline (1 and 2 passes), the trees path with the compiled library and with
XGBoost's own predictor, and times the stages of the trees path (detection + fits, features, trees)
so the cost of the learned part is visible. One thread everywhere (workers are one process per core).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from streamer.modalities.smlm3d.features import features  # noqa: E402
from streamer.modalities.smlm3d.localize import localize  # noqa: E402
from streamer.modalities.smlm3d.predictors import MLEPredictor, TreesPredictor  # noqa: E402
from streamer.modalities.smlm3d.simulate import SimConfig, simulate_frames  # noqa: E402


def rate(fn, frames: np.ndarray, packet: int, repeat: int = 2) -> float:
    """Best-of-``repeat`` frames/s of ``fn`` over the frames cut into packets."""
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for s in range(0, len(frames), packet):
            fn(frames[s:s + packet])
        best = min(best, time.perf_counter() - t0)
    return len(frames) / best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--packet", type=int, default=100)
    ap.add_argument("--density", type=float, default=2.0)
    ap.add_argument("--write", action="store_true", help="update the smlm3d section of bench/RESULTS.md")
    a = ap.parse_args()
    frames, truth = simulate_frames(SimConfig(n_frames=a.frames, photons=5000, background=50, density=a.density,
                                              sampling="structure", structure_every=100, seed=7))
    preds = {
        "mle (1 pass)": MLEPredictor(),
        "mle (2 passes, no trees)": MLEPredictor(passes=2),
        "trees compiled": TreesPredictor("trees-structure", kind="compiled"),
        "trees xgboost": TreesPredictor("trees-structure", kind="xgboost"),
        "trees-csr compiled": TreesPredictor("trees-csr", kind="compiled"),
    }
    rows = []
    for name, p in preds.items():
        r = rate(p.predict_frames, frames, a.packet)
        rows.append((name, r))
        print(f"{name:28s} {r:8.0f} frames/s", flush=True)
    # stage costs of the trees path, per frame
    tp = preds["trees compiled"]
    tx = preds["trees xgboost"]
    L = localize(frames[:a.packet], passes=tp.passes)
    X = features(L, 100.0)
    stage = {}
    stage["detect + fits (2 passes)"] = 1.0 / rate(lambda f: localize(f, passes=tp.passes), frames, a.packet, 1)
    stage["features"] = _time(lambda: features(L, 100.0)) / a.packet
    b = tp.bundle
    stage["3 ensembles, compiled"] = _time(lambda: (b.reg.predict(X), b.cls.predict(X), b.scale.predict(X))) / a.packet
    bx = tx.bundle
    stage["3 ensembles, xgboost"] = _time(lambda: (bx.reg.predict(X), bx.cls.predict(X), bx.scale.predict(X))) / a.packet
    for k, v in stage.items():
        print(f"  {k:30s} {1e6 * v:8.1f} us/frame")
    lines = ["| predictor (1 core) | frames/s |", "|---|---|"] + [f"| {n} | {r:.0f} |" for n, r in rows]
    lines += ["", "| trees-path stage | us/frame |", "|---|---|"] + [f"| {k} | {1e6 * v:.1f} |" for k, v in stage.items()]
    text = "\n".join(lines)
    if a.write:
        from streamer.core.results_md import write_sections

        head = "## smlm3d: predictor throughput (one core)"
        write_sections(ROOT / "bench" / "RESULTS.md", {head: (
            f"{head}\n\n`.venv/bin/python bench/smlm3d/bench_predictors.py --frames {a.frames} --packet {a.packet} "
            f"--write`: 64x64 frames, {a.density:g} emitters/frame (structure), 5k photons / 50 bg, packets of "
            f"{a.packet} frames, one thread; shared 2-core machine (other jobs running), best of 2.\n\n{text}")})
    return 0


def _time(fn, n: int = 20) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


if __name__ == "__main__":
    raise SystemExit(main())
