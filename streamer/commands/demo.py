"""``streamer demo``: a simulated acquisition through the FULL pipeline, with a headless summary.

simulate -> publish (replay at full speed) -> N worker processes -> sink (ordered, persisted) ->
read the persisted results back and compare with the simulator's ground truth.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from ..crb import crb_for_recording
from ..metrics import markdown_table, per_class_table
from ..pipeline import defaults
from ..pipeline.launcher import run_local_pipeline
from ..pipeline.report import format_summary
from ..pipeline.writer import load_results
from ..simulate import simulate

HELP = "simulate an acquisition, stream it through publisher -> workers -> sink, print a summary"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--regime", choices=["static", "dynamic"], default="static")
    p.add_argument("--traces", type=int, default=200)
    p.add_argument("--tuples-per-trace", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("-w", "--workers", type=int, default=2)
    p.add_argument("--predictor", default=None,
                   help="predictor spec (default: the trained model of --regime, i.e. 'static' or 'dynamic')")
    p.add_argument("--packet-size", type=int, default=defaults.PACKET_SIZE)
    p.add_argument("--rate", type=float, default=None, help="tuples/s (default: as fast as possible)")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    args.predictor = args.predictor or args.regime
    rec = simulate(args.regime, args.traces, args.tuples_per_trace, args.seed)
    print(f"simulated {len(rec):,} {args.regime} tuples ({args.traces} traces, seed {args.seed}, "
          f"mean {rec.tuples.photons.mean():.0f} photons/tuple) in {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory(prefix="streamer-demo-") as out:
        summary = run_local_pipeline(rec, workers=args.workers, predictor=args.predictor,
                                     packet_size=args.packet_size, rate=args.rate, out_dir=out)
        res = load_results(out)
    print(f"\npipeline: {args.predictor} x {args.workers} workers, packets of {args.packet_size}")
    print(format_summary(summary))
    if args.rate is None:
        print("                  (replayed as fast as possible: latency is time queued in the bounded window;"
              " try --rate 10000 --packet-size 10 for live-like latency)")
    # replay sends tuples in file order, packet k = tuples [k*size, (k+1)*size): map results back
    idx = res["seq"] * args.packet_size + res["row"]
    complete = len(idx) == len(rec) and np.array_equal(idx, np.arange(len(rec)))
    print(f"output            {'every tuple exactly once, in order' if complete else 'INCOMPLETE'}"
          f" ({len(idx):,} of {len(rec):,} tuples persisted)")
    truth = rec.truth
    two_on = truth["state"][idx] == 2 if "state" in truth else np.ones(len(idx), bool)
    d_true = truth["d_nm"][idx][two_on]
    d_hat = res["distance"][two_on].astype(np.float64)
    finite = np.isfinite(d_hat)
    print(f"\naccuracy vs ground truth ({two_on.sum():,} two-emitter tuples, {(~finite).sum():,} without estimate):")
    crb = None
    if "amplitude" in truth:  # the physical limit on identical tuples, for scale
        sel = idx[two_on][finite]
        crb = crb_for_recording({k: v[sel] for k, v in truth.items()}, rec.tuples.positions[sel])
    print(markdown_table(per_class_table(d_true[finite], {args.predictor: d_hat[finite]}, crb)))
    lo, hi = res["lower"][two_on], res["upper"][two_on]
    has_iv = np.isfinite(lo) & np.isfinite(hi)
    if has_iv.any():
        covered = (lo[has_iv] <= d_true[has_iv]) & (d_true[has_iv] <= hi[has_iv])
        print(f"interval coverage {covered.mean():.1%} (nominal 90%), mean width "
              f"{np.mean(hi[has_iv] - lo[has_iv]):.2f} nm, {has_iv.mean():.0%} of tuples carry an interval")
    else:
        print(f"intervals         none ({args.predictor} has no calibrated interval; flags carry FLAG_NO_INTERVAL)")
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f} s")
    return 0 if complete else 1
