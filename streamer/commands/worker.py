"""``streamer worker``: validate packets and predict every item of each, vectorized per packet."""

from __future__ import annotations

import argparse

from ..core import profile, registry
from ..pipeline import defaults
from ..pipeline.worker import parse_serves, run_worker

HELP = "run a worker: connect to the sink, predict every packet it is given"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work", default=defaults.DEFAULT_WORK, help="the sink's ROUTER endpoint")
    p.add_argument("--predictor", action="append", default=None, metavar="[MODALITY:]NAME",
                   help="predictor to serve, repeatable for several modalities (e.g. --predictor static "
                        "--predictor electron:trees); an unqualified NAME belongs to --modality; "
                        "default: the modality's default predictor (`streamer modalities` lists them)")
    p.add_argument("--prefetch", type=int, default=defaults.PREFETCH, help="jobs held at once (>= 1)")
    p.add_argument("--heartbeat", type=float, default=defaults.HEARTBEAT_S, help="heartbeat period, s")
    p.add_argument("--max-items", "--max-tuples", dest="max_items", type=int, default=None,
                   help="reject packets with more items (default: each packet kind's own limit)")
    p.add_argument("--instrument", action="append", default=[], metavar="PROFILE.toml",
                   help="an instrument profile this worker serves (repeatable): packets naming it (envelope key "
                        "'instrument') get the bundle trained for it; the first of a modality also serves packets "
                        "that name none. Results outside what the model covers are flagged, without interval")
    p.add_argument("--models-dir", default=None, help="where to look for profile bundles (default compiled_models/)")
    p.add_argument("--curve", default=None, metavar="DIR", help="CurveZMQ key directory (client keys)")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this parent process is gone")
    p.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.prefetch < 1:
        raise ValueError("--prefetch must be >= 1")
    specs = args.predictor or [f"{args.modality}:"]
    serves = parse_serves(specs, default_modality=args.modality)
    profiles = [profile.load(path, registry.get) for path in args.instrument]
    return run_worker(args.work, serves, prefetch=args.prefetch, heartbeat_s=args.heartbeat,
                      max_items=args.max_items, curve_dir=args.curve, parent_pid=args.parent_pid,
                      profiles=profiles, models_dir=args.models_dir, verbose=args.verbose)
