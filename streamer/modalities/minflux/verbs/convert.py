"""``streamer convert``: recorded real data (Hensel parsed.pkl, Abberior export) -> replay file (.npz)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

HELP = "convert recorded data (Hensel et al. parsed.pkl / folder, Abberior .npy/.mat) to a replay file (.npz)"
#: kept in sync with streamer.loaders.FORMATS; not imported so that building the CLI does not load pandas
FORMATS = ("auto", "hensel", "abberior", "replay")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="parsed.pkl, a folder of them (e.g. MINFLUXDynamic/parsed/raw), or .npy/.mat")
    p.add_argument("output", help="replay file to write (.npz), playable with `streamer publish`")
    p.add_argument("--format", choices=FORMATS, default="auto", help="default: from the file type")
    p.add_argument("--distance-nm", type=float, default=None,
                   help="nominal distance (ground truth) overriding the 'NNnm' folder name / gt column")
    g = p.add_argument_group("Hensel parsed.pkl")
    g.add_argument("--states", default=None,
                   help="state/segment file (filtered.pkl / segmented.pkl) for a single parsed.pkl; "
                        "default: found next to it or in the mirrored filtered/ tree")
    g.add_argument("--no-states", action="store_true", help="ignore state/segment files")
    g.add_argument("--all-states", action="store_true",
                   help="keep 1-emitter/background tuples too (truth_state says which)")
    g.add_argument("--pos-unit", choices=["auto", "nm", "um", "m"], default="auto",
                   help="unit of the 'pos' column (auto: inferred from the exposure spacing)")
    g = p.add_argument_group("Abberior export")
    g.add_argument("--counts-field", default=None, help="per-exposure counts field (default: phe)")
    g.add_argument("--half-l-nm", type=float, default=None, help="beam offset L/2 in nm (default: ext / 2)")


def _options(args: argparse.Namespace, fmt: str) -> dict:
    opts: dict = {"distance_nm": args.distance_nm}
    if fmt == "hensel":
        opts["states"] = False if args.no_states else args.states
        opts["two_emitter_only"] = not args.all_states
        opts["pos_unit"] = args.pos_unit
    elif fmt == "abberior":
        if args.counts_field:
            opts["counts_field"] = args.counts_field
        opts["half_l_nm"] = args.half_l_nm
    elif args.distance_nm is not None:
        raise ValueError("--distance-nm does not apply to a replay (.npz) input")
    else:
        opts = {}
    return opts


def run(args: argparse.Namespace) -> int:
    from ..loaders import detect_format, load_with_report

    if args.no_states and args.states:
        raise ValueError("--states and --no-states contradict each other")
    if Path(args.output).suffix.lower() != ".npz":
        raise ValueError(f"{args.output}: the replay file must end in .npz")
    fmt = detect_format(args.input) if args.format == "auto" else args.format
    t0 = time.perf_counter()
    rec, report = load_with_report(args.input, fmt, **_options(args, fmt))
    path = rec.save(args.output)
    elapsed = time.perf_counter() - t0
    photons = rec.tuples.photons
    print(f"wrote {len(rec):,} tuples ({fmt}) to {path} in {elapsed:.2f} s; "
          f"photons/tuple median {np.median(photons):.0f} (range {photons.min()}-{photons.max()})")
    dropped = {k: v for k, v in report.items() if k.endswith("_dropped") and v}
    if dropped:
        print("dropped: " + ", ".join(f"{k.removesuffix('_dropped').replace('_', ' ')} {v:,}"
                                      for k, v in dropped.items()))
    if "d_nm" in rec.truth:
        d, n = np.unique(rec.truth["d_nm"], return_counts=True)
        print("nominal distance: " + ", ".join(f"{di:g} nm x {ni:,}" for di, ni in zip(d, n)))
    if rec.meta.get("pos_unit_in_source") not in (None, "nm"):
        print(f"positions converted from {rec.meta['pos_unit_in_source']} to nm")
    return 0
