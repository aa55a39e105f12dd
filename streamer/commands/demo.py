"""``streamer demo``: simulate an acquisition and summarize the estimators headlessly."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from . import estimate, simulate

HELP = "simulate a static-ruler acquisition and print a headless accuracy summary"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--traces", type=int, default=100)
    p.add_argument("--tuples-per-trace", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "demo.npz")
        simulate.run(argparse.Namespace(output=path, regime="static", traces=args.traces,
                                        tuples_per_trace=args.tuples_per_trace, seed=args.seed,
                                        v0=1.0, v0_jitter=0.0))
        return estimate.run(argparse.Namespace(recording=path, estimators=["closed-form", "mle"],
                                               background=1.0, v0=1.0, limit=None))
