"""``streamer estimate``: run physics estimators over a replay file and compare with truth/CRB."""

from __future__ import annotations

import argparse
import time

import numpy as np

from ..crb import crb_for_recording
from ..datasets import two_emitter_tuples
from ..estimators import PHYSICS_ESTIMATORS
from ....core.metrics import markdown_table, per_class_table
from ..recording import load_recording

HELP = "run closed-form / MLE estimators over a replay file; table vs ground truth and CRB"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", help="replay file (.npz)")
    p.add_argument("--estimators", nargs="+", default=list(PHYSICS_ESTIMATORS), choices=list(PHYSICS_ESTIMATORS))
    p.add_argument("--background", type=float, default=1.0, help="calibrated background per exposure")
    p.add_argument("--v0", type=float, default=1.0, help="calibrated single-emitter visibility")
    p.add_argument("--limit", type=int, default=None, help="use only the first N tuples")


def run(args: argparse.Namespace) -> int:
    rec = load_recording(args.recording)
    if args.limit:
        rec = rec.subset(slice(0, args.limit))
    rec = two_emitter_tuples(rec)
    estimates = {}
    for name in args.estimators:
        est = PHYSICS_ESTIMATORS[name](background=args.background, v0=args.v0)
        t0 = time.perf_counter()
        estimates[name] = est.predict(rec.tuples)
        dt = time.perf_counter() - t0
        print(f"{name}: {len(rec):,} tuples in {dt:.2f} s ({len(rec) / dt:,.0f} tuples/s)")
    if "d_nm" not in rec.truth:
        for name, d in estimates.items():
            print(f"{name}: median {np.median(d):.2f} nm, IQR {np.subtract(*np.percentile(d, [75, 25])):.2f} nm")
        return 0
    crb = crb_for_recording(rec.truth, rec.tuples.positions) if "amplitude" in rec.truth else None
    print(markdown_table(per_class_table(rec.truth["d_nm"], estimates, crb)))
    return 0
