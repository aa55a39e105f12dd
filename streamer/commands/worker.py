"""``streamer worker``: validate packets and predict distances + intervals, vectorized per packet."""

from __future__ import annotations

import argparse

from .. import schema
from ..pipeline import defaults
from ..pipeline.worker import run_worker

HELP = "run a worker: connect to the sink, predict every packet it is given"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work", default=defaults.DEFAULT_WORK, help="the sink's ROUTER endpoint")
    p.add_argument("--predictor", default=defaults.DEFAULT_PREDICTOR,
                   help=f"predictor spec for streamer.predictor.load_predictor (default {defaults.DEFAULT_PREDICTOR})")
    p.add_argument("--prefetch", type=int, default=defaults.PREFETCH, help="jobs held at once (>= 1)")
    p.add_argument("--heartbeat", type=float, default=defaults.HEARTBEAT_S, help="heartbeat period, s")
    p.add_argument("--max-tuples", type=int, default=schema.MAX_TUPLES, help="reject larger packets")
    p.add_argument("--curve", default=None, metavar="DIR", help="CurveZMQ key directory (client keys)")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this parent process is gone")
    p.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.prefetch < 1:
        raise ValueError("--prefetch must be >= 1")
    return run_worker(args.work, args.predictor, prefetch=args.prefetch, heartbeat_s=args.heartbeat,
                      max_tuples=args.max_tuples, curve_dir=args.curve, parent_pid=args.parent_pid,
                      verbose=args.verbose)
