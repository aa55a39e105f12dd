"""``streamer bench --modality NAME``: end-to-end throughput of predictors on one simulated recording, side by side.

Every predictor runs through the same local pipeline (replay publisher -> sink -> N worker processes)
on identical data, alternating order over ``--rounds`` so that machine noise hits all of them; the
table reports the median items/s and each one's ratio to the first predictor.
"""

from __future__ import annotations

import argparse
import statistics
import time

from ..core.metrics import markdown_table
from ..pipeline.launcher import run_local_pipeline
from . import simulation

HELP = "end-to-end throughput (replay -> sink -> workers) of the modality's predictors, ratios in one run"
MODALITY_AWARE = True


def add_arguments(p: argparse.ArgumentParser, modality) -> None:
    p.add_argument("--predictor", action="append", default=None, metavar="NAME",
                   help=f"predictor to time, repeatable (default: {modality.default_predictor!r} and the others "
                        "of the modality); the first is the reference of the ratios")
    p.add_argument("-w", "--workers", type=int, default=2)
    p.add_argument("--packet-size", type=int, default=None, help="items per packet (default: the modality's)")
    p.add_argument("--repeat", type=int, default=3, help="replay the recording this many times per run")
    p.add_argument("--rounds", type=int, default=2, help="runs per predictor (order alternates)")
    simulation.add_options(p, modality)


def run(args: argparse.Namespace) -> int:
    mod = args._modality_obj
    cmds = mod.commands
    rec = simulation.simulate(args, "nothing to benchmark with")
    names = args.predictor or [mod.default_predictor] + [p.name for p in mod.predictors
                                                         if p.name != mod.default_predictor]
    for n in names:
        mod.predictor(n)
    size = args.packet_size or getattr(cmds, "demo_packet_size", 1000)
    rates: dict[str, list[float]] = {n: [] for n in names}
    lost = 0
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            s = run_local_pipeline(rec, workers=args.workers, predictor=f"{mod.name}:{name}", packet_size=size,
                                   repeat=args.repeat)
            lost += s["publisher"]["tuples"] - s["tuples"] - s["rejected_tuples"]
            rates[name].append(s["mean_rate_tuples_s"])
            print(f"  {name}: {s['mean_rate_tuples_s']:,.0f} {rec.kind}/s ({time.perf_counter() - t0:.1f} s)", flush=True)
    ref = statistics.median(rates[names[0]])
    rows = [{"predictor": n, "rate": f"{statistics.median(v):,.0f}", "ratio": statistics.median(v) / ref}
            for n, v in rates.items()]
    print(f"\n{mod.name}: {len(rec):,} {rec.kind} x {args.repeat}, packets of {size}, {args.workers} workers, "
          f"median of {args.rounds} runs each")
    print(markdown_table(rows, ["predictor", "rate", "ratio"], ["predictor", f"{rec.kind}/s end to end",
                                                                  f"ratio to {names[0]}"]))
    if lost:
        print(f"LOST {lost} items")
    return 0 if not lost else 1
