"""``streamer demo [--modality NAME]``: a simulated acquisition through the FULL pipeline, headless summary.

simulate -> publish (replay at full speed) -> N worker processes -> sink (ordered, persisted) ->
read the persisted results back and compare with the simulator's ground truth (the modality's report).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from ..pipeline import defaults
from ..pipeline.launcher import run_local_pipeline
from ..pipeline.report import format_summary
from ..pipeline.results import load_results
from . import simulation

HELP = "simulate an acquisition, stream it through publisher -> workers -> sink, print a summary"
MODALITY_AWARE = True


def add_arguments(p: argparse.ArgumentParser, modality) -> None:
    p.add_argument("-w", "--workers", type=int, default=2)
    p.add_argument("--predictor", default=None,
                   help=f"predictor spec (default: {modality.name}'s own choice for the simulated data)")
    p.add_argument("--packet-size", type=int, default=None, help=f"items per packet (default {defaults.PACKET_SIZE} "
                   "tuples for minflux, the modality's choice otherwise)")
    p.add_argument("--rate", type=float, default=None, help="items/s (default: as fast as possible)")
    simulation.add_options(p, modality)


def run(args: argparse.Namespace) -> int:
    mod = args._modality_obj
    cmds = mod.commands
    t0 = time.perf_counter()
    rec = simulation.simulate(args, "nothing to demo", demo=True)
    print(f"simulated {simulation.describe(args, rec)} in {time.perf_counter() - t0:.1f} s")
    args.predictor = args.predictor or (cmds.demo_predictor(args) if hasattr(cmds, "demo_predictor")
                                        else mod.default_predictor)
    if args.packet_size is None:
        args.packet_size = getattr(cmds, "demo_packet_size", defaults.PACKET_SIZE)
    with tempfile.TemporaryDirectory(prefix="streamer-demo-") as out:
        summary = run_local_pipeline(rec, workers=args.workers, predictor=f"{mod.name}:{args.predictor}",
                                     packet_size=args.packet_size, rate=args.rate, out_dir=out)
        res = load_results(out, mod.name)
    print(f"\npipeline: {mod.name}:{args.predictor} x {args.workers} workers, packets of {args.packet_size} {rec.kind}")
    print(format_summary(summary, rec.kind))
    if args.rate is None:
        print("                  (replayed as fast as possible: latency is time queued in the bounded window;"
              " try --rate with small --packet-size for live-like latency)")
    ok = True
    if hasattr(cmds, "report"):
        text, ok = cmds.report(rec, res, args)
        print(text)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1
