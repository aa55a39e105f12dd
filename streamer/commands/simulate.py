"""``streamer simulate --modality NAME OUTPUT``: a simulated acquisition with ground truth, as a replay file."""

from __future__ import annotations

import argparse
import time

from . import simulation

HELP = "simulate an acquisition of the modality (with ground truth) and write a replay file (.npz)"
MODALITY_AWARE = True


def add_arguments(p: argparse.ArgumentParser, modality) -> None:
    p.add_argument("output", help="replay file to write (.npz)")
    simulation.add_options(p, modality, grouped=False)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    rec = simulation.simulate(args)
    elapsed = time.perf_counter() - t0
    path = rec.save(args.output)
    print(f"wrote {simulation.describe(args, rec)} to {path} in {elapsed:.2f} s")
    return 0
