"""``streamer traces OUT``: per-trace distances of a results directory, from every worker's partials.

The ``general`` predictor returns, with each packet, the sums it added to its per-trace and
calibration state (:mod:`..partials`); the sink persists them exactly once with the packet. This
merges them over all workers: each trace's distance and 90% interval from all its 2-on tuples,
with the stream's calibration from all its 1-on and background-only tuples.
"""

from __future__ import annotations

import argparse

import numpy as np

HELP = "per-trace distance + 90% interval from a results directory (merged over all workers' partial sums)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="a sink's --out directory with results of the `general` predictor")
    p.add_argument("--v0", type=float, default=None, help="the instrument's v0, if known (default: merged self-calibration)")
    p.add_argument("--background", type=float, default=None, help="its background per exposure, if known")
    p.add_argument("--csv", default=None, metavar="FILE", help="write the per-trace table as CSV")


def per_trace(results: dict, v0: float | None = None, background: float | None = None) -> dict[str, np.ndarray]:
    """The per-trace table of :func:`streamer.pipeline.results.load_results` output."""
    from ..partials import reduce

    if "det_part_sums" not in results:
        raise ValueError("these results hold no per-trace partial sums: they were not made by the `general` predictor")
    return reduce(results["det_stream"], results["det_part_trace"], results["det_part_kind"], results["det_part_n"],
                  results["det_part_sums"], v0=v0, background=background)


def run(args: argparse.Namespace) -> int:
    from ....core.metrics import markdown_table
    from ....pipeline.results import load_results

    table = per_trace(load_results(args.results, "minflux"), args.v0, args.background)
    rows = [{k: table[k][i] for k in table} for i in range(len(table["trace_id"]))]
    print(markdown_table(rows, ["stream", "trace_id", "distance", "lower", "upper", "two_on_tuples", "blocks", "v0",
                                "background", "calibrated"],
                         ["stream", "trace", "distance (nm)", "lower", "upper", "2-on tuples", "blocks", "v0",
                          "background", "calibrated"], 3))
    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(table))
            w.writerows(zip(*(table[k] for k in table)))
        print(f"wrote {len(rows)} traces to {args.csv}")
    return 0
