"""``streamer run``: the whole local pipeline (sink + N workers + replay publisher), then a summary."""

from __future__ import annotations

import argparse
import json
import sys

from ..pipeline.launcher import run_local_pipeline
from ..pipeline.report import format_summary
from . import publish

HELP = "run sink + N workers locally, replay a file (or simulation) through them, print the summary"
MODALITY_AWARE = True


def add_arguments(p: argparse.ArgumentParser, modality) -> None:
    publish.add_arguments(p, modality, with_endpoint=False)
    p.add_argument("-w", "--workers", type=int, default=2)
    p.add_argument("--predictor", action="append", default=None, metavar="[MODALITY:]NAME",
                   help=f"predictor the workers serve (default: {modality.name}'s {modality.default_predictor!r}); "
                        "repeatable")
    p.add_argument("--out", default=None, help="persist results here (Parquet per modality/stream, manifest.json, errors.jsonl; `streamer results DIR` reads them)")
    p.add_argument("--json", default=None, help="also write the summary as JSON to this file")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="show sink/worker output")


def predictors(args: argparse.Namespace, rec) -> list[str]:
    """Qualified predictor specs: unqualified names belong to the recording's modality."""
    specs = args.predictor or [f"{rec.modality}:"]
    return [s if ":" in s else f"{rec.modality}:{s}" for s in specs]


def run(args: argparse.Namespace) -> int:
    rec = publish.load_source(args)
    specs = predictors(args, rec)
    try:
        summary = run_local_pipeline(rec, workers=args.workers, predictor=specs,
                                     packet_size=args.packet_size, rate=args.rate, repeat=args.repeat,
                                     out_dir=args.out, timeout=args.timeout, quiet=not args.verbose)
    except (RuntimeError, TimeoutError) as exc:  # a process died or the run overran: say which
        print(f"streamer run: error: {exc}", file=sys.stderr)
        return 1
    print(f"{', '.join(specs)} x {args.workers} workers, packets of {args.packet_size}"
          + (f", paced at {args.rate:,.0f} items/s" if args.rate else ", as fast as possible"))
    print(format_summary(summary, rec.kind))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)
    if args.out and rec.truth and args.repeat == 1:
        _report(args, rec, specs[0])
    return 0 if summary["tuples"] == summary["publisher"]["tuples"] - summary["rejected_tuples"] else 1


def _report(args: argparse.Namespace, rec, spec: str) -> None:
    """A replay file that carries ground truth (a simulation, or real data converted with its truth,
    e.g. ``streamer convert --modality smlm3d --truth``): the modality's accuracy report on the
    persisted results, as ``streamer demo`` prints it."""
    from ..core import registry
    from ..pipeline.results import load_results

    mod = registry.get(rec.modality)
    if not hasattr(mod.commands, "report"):
        return
    rargs = argparse.Namespace(**vars(args))
    rargs.predictor = spec.split(":", 1)[1] or mod.default_predictor
    text, _ = mod.commands.report(rec, load_results(args.out, rec.modality), rargs)
    print(text)
