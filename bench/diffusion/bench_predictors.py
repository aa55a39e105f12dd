"""Predictor throughput per core for the diffusion modality: stacks/s of each predictor on one
packet of 16x64x64 stacks, and the booster alone compiled (TL2cgen) vs XGBoost, one thread each.

    .venv/bin/python bench/diffusion/bench_predictors.py [--n 512] [--write]

Thread pools are pinned to one thread before numpy is imported: a worker is one process per core.
The lead's end-to-end number (replay -> sink -> 2 workers) is ``streamer bench --modality diffusion``.
"""

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from streamer.modalities.diffusion.evaluate import make_packet, throughput, tree_rates  # noqa: E402
from streamer.modalities.diffusion.model import DEFAULT_BUNDLE  # noqa: E402
from streamer.modalities.diffusion.physics import Optics, simulate  # noqa: E402
from streamer.modalities.diffusion.predictors import TrackBaseline, TreesPredictor  # noqa: E402

SECTION = "## diffusion: predictor throughput per core"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="stacks per packet")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = ap.parse_args()
    op = Optics()
    trees = TreesPredictor(DEFAULT_BUNDLE, backend="compiled")
    preds = {"trees (compiled)": trees, "trees-xgboost": TreesPredictor(DEFAULT_BUNDLE, backend="xgboost"),
             "msd": TrackBaseline("msd"), "cve": TrackBaseline("cve")}
    rates = throughput(preds, n=args.n, repeat=args.repeat, op=op)
    rng = np.random.default_rng(11)
    b = simulate(rng, np.exp(rng.uniform(np.log(0.01), np.log(10), args.n)), np.full(args.n, 1000.0),
                 np.full(args.n, 2.0), op)
    pk = make_packet(b.stacks, op, op.baseline, op.adu_per_photon)
    t0 = time.perf_counter()
    for _ in range(args.repeat):
        X, _, _ = trees.features(pk)
    feat_rate = args.repeat * args.n / (time.perf_counter() - t0)
    tr = tree_rates(DEFAULT_BUNDLE, np.concatenate([X] * max(1, 4096 // len(X))), repeat=args.repeat)
    load = os.getloadavg()[0]
    lines = [f"{SECTION}", "",
             f"`.venv/bin/python bench/diffusion/bench_predictors.py --n {args.n}` ({time.strftime('%Y-%m-%d %H:%M')}),"
             f" one process, 1 thread, packets of {args.n} stacks 16x64x64 <u2, model `{trees.model_id}`; "
             f"1-min load average {load:.1f} on this shared 2-core machine (rates vary ~2x with it).", "",
             "| stage | per core |", "|---|---|"]
    lines += [f"| predictor {k} | {v:,.0f} stacks/s |" for k, v in rates.items()]
    lines += [f"| measurement + features only | {feat_rate:,.0f} stacks/s |",
              f"| booster alone, compiled | {tr['compiled']:,.0f} rows/s |",
              f"| booster alone, xgboost | {tr['xgboost']:,.0f} rows/s |", "",
              f"Compiled booster {tr['compiled'] / tr['xgboost']:.1f}x faster than XGBoost's predictor; whole "
              f"predictor compiled / xgboost {rates['trees (compiled)'] / rates['trees-xgboost']:.2f}x (the image "
              f"measurement dominates). 2,000 stacks/s end to end with 2 workers needs >= 1,000 stacks/s per worker."]
    text = "\n".join(lines)
    print(text)
    if args.write:
        from pathlib import Path

        from streamer.core.results_md import write_sections

        write_sections(Path(__file__).resolve().parents[1] / "RESULTS.md", {SECTION: text})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
