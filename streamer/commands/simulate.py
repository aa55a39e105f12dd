"""``streamer simulate --modality NAME OUTPUT``: a simulated acquisition with ground truth, as a replay file."""

from __future__ import annotations

import argparse
import time

HELP = "simulate an acquisition of the modality (with ground truth) and write a replay file (.npz)"
MODALITY_AWARE = True


def add_arguments(p: argparse.ArgumentParser, modality) -> None:
    p.add_argument("output", help="replay file to write (.npz)")
    hook = getattr(modality.commands, "add_simulate_arguments", None)
    if hook:
        hook(p)
    p.set_defaults(_modality_obj=modality)


def run(args: argparse.Namespace) -> int:
    cmds = args._modality_obj.commands
    if not hasattr(cmds, "simulate"):
        raise ValueError(f"modality {args.modality!r} has no simulator")
    t0 = time.perf_counter()
    rec = cmds.simulate(args)
    elapsed = time.perf_counter() - t0
    path = rec.save(args.output)
    what = cmds.describe(rec) if hasattr(cmds, "describe") else f"{len(rec):,} {rec.kind} items"
    print(f"wrote {what} to {path} in {elapsed:.2f} s")
    return 0
