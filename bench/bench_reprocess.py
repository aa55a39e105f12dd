"""Reprocessing throughput on Dask (1 and 2 workers) vs the live pipeline, same data, one run.

    .venv/bin/python bench/bench_reprocess.py --tuples 2000000

A MINFLUX recording is replayed once through the live pipeline (sink + 2 workers, raw archive on),
then the archive is reprocessed with a LocalCluster of 1 and of 2 worker processes, alternating over
``--rounds``. Reports median items/s and ratios; writes "## Reprocessing on Dask" in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.core.results_md import write_sections  # noqa: E402
from streamer.modalities.minflux.simulate import simulate  # noqa: E402
from streamer.pipeline.launcher import run_local_pipeline  # noqa: E402
from streamer.pipeline.reprocess import reprocess  # noqa: E402

SECTION = "## Reprocessing on Dask"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tuples", type=int, default=2_000_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--predictor", default="minflux:static")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    rec = simulate("static", args.tuples // 1000, 1000, seed=3)
    rates: dict[str, list[float]] = {"live pipeline (sink + 2 workers)": [], "dask, 1 worker": [], "dask, 2 workers": []}
    with tempfile.TemporaryDirectory(prefix="streamer-rp-") as tmp:
        tmp = Path(tmp)
        for r in range(args.rounds):
            s = run_local_pipeline(rec, workers=2, predictor=args.predictor, packet_size=1000,
                                   out_dir=str(tmp / f"live{r}"), sink_args=["--archive", str(tmp / f"arch{r}")])
            rates["live pipeline (sink + 2 workers)"].append(s["mean_rate_tuples_s"])
            for w in ([1, 2] if r % 2 == 0 else [2, 1]):
                s = reprocess(tmp / f"arch{r}", tmp / f"re{r}-{w}", [args.predictor], workers=w, packets_per_task=100)
                rates[f"dask, {w} worker{'s' if w > 1 else ''}"].append(s["items"] / s["compute_s"])
                print(f"round {r}: {w} workers {rates[f'dask, {w} worker' + ('s' if w > 1 else '')][-1]:,.0f}/s", flush=True)
    ref = statistics.median(rates["dask, 1 worker"])
    live = statistics.median(rates["live pipeline (sink + 2 workers)"])
    lines = ["| run | median tuples/s | runs | ratio to dask 1 worker | ratio to live |", "|---|---|---|---|---|"]
    for k, v in rates.items():
        m = statistics.median(v)
        lines.append(f"| {k} | {m:,.0f} | {', '.join(f'{x / 1e3:,.0f}k' for x in v)} | {m / ref:.2f} | {m / live:.2f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        cmd = "`.venv/bin/python bench/bench_reprocess.py " + " ".join(map(shlex.quote, sys.argv[1:])) + "`"
        write_sections(ROOT / "bench" / "RESULTS.md", {SECTION: (
            f"{SECTION}\n\nCommand: {cmd}. {args.tuples:,} MINFLUX tuples ({args.predictor}), archive of the live run "
            "reprocessed on a LocalCluster (1 thread per worker process); wall time includes the cluster's start-up "
            f"(~2-3 s). 2-core VM shared with other sessions.\n\n{table}\n")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
