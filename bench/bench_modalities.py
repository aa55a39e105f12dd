"""End-to-end throughput of every modality against its DESIGN.md target, predictors side by side.

    .venv/bin/python bench/bench_modalities.py                 # every case below whose modality is installed
    .venv/bin/python bench/bench_modalities.py --case electron-576 --rounds 3

Each case simulates its recording once (the modality's own simulator and options), then replays it
through the local pipeline (replay publisher -> sink -> 2 worker processes, no --out) for each
predictor, alternating the order over ``--rounds``; the median items/s at the sink is compared with
the target and the first predictor's ratio to the others is reported (same data, same run). Writes
"## End to end per modality" in bench/RESULTS.md with the command: the section is rewritten whole
(the rows of the cases not run are kept, text under the table is not), so notes on its rows belong
in a section of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.commands import simulation  # noqa: E402
from streamer.core import registry  # noqa: E402
from streamer.core.results_md import write_sections  # noqa: E402
from streamer.pipeline.launcher import run_local_pipeline  # noqa: E402

SECTION = "## End to end per modality"

#: case -> modality, simulator options, packet size, repeat, predictors (first = the shipped default), target
CASES = {
    "minflux": ("minflux", ["--traces", "500", "--tuples-per-trace", "1000"], 1000, 3, ["static", "closed-form"],
                1_000_000),
    "electron-100": ("electron", ["--frames", "20000", "--size", "100"], 500, 2, ["trees", "centroid3x3"], 10_000),
    "electron-576": ("electron", ["--frames", "200", "--size", "576", "--electrons", "2900"], 4, 1, ["trees", "centroid3x3"], 200),
    "smlm3d": ("smlm3d", ["--frames", "8000"], 200, 2, ["trees", "mle"], 2_000),
    "diffusion": ("diffusion", ["--stacks", "6000"], 256, 3, ["trees", "msd"], 2_000),
    # issue 15: the live MINFLUX predictor with everything on (segmentation, self-calibration, the
    # instrument-aware model, per-trace distances) on dynamic traces, vs the static model
    "minflux-live": ("minflux", ["--regime", "dynamic", "--traces", "1000", "--tuples-per-trace", "1000"], 1000, 3,
                     ["general", "static"], 1_000_000),
    # the same stream in packets of 10,000 tuples (10 ms of acquisition at 1 M tuples/s): the per-packet
    # costs (ZeroMQ hops, dispatch, Python calls per packet and trace) shared over 10x the tuples
    "minflux-live-10k": ("minflux", ["--regime", "dynamic", "--traces", "1000", "--tuples-per-trace", "1000"], 10_000,
                         3, ["general", "static"], 1_000_000),
}


def simulate(name: str, options: list[str]):
    return simulation.recording(registry.get(name), options)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", action="append", default=None, choices=list(CASES))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    cases = args.case or [c for c, v in CASES.items() if registry.known(v[0])]
    cmd = "`.venv/bin/python bench/bench_modalities.py " + " ".join(map(shlex.quote, sys.argv[1:])) + "`"
    load = os.getloadavg()[0]
    by_case: dict[str, list[str]] = {}
    for case in cases:
        rows = by_case.setdefault(case, [])
        name, options, size, repeat, predictors, target = CASES[case]
        mod = registry.get(name)
        predictors = predictors or [mod.default_predictor] + [q.name for q in mod.predictors
                                                               if q.name != mod.default_predictor][:1]
        rec = simulate(name, options)
        rates: dict[str, list[float]] = {q: [] for q in predictors}
        lost = 0
        for r in range(args.rounds):
            for q in (predictors if r % 2 == 0 else predictors[::-1]):
                s = run_local_pipeline(rec, workers=args.workers, predictor=f"{name}:{q}", packet_size=size,
                                       repeat=repeat)
                lost += s["publisher"]["tuples"] - s["tuples"] - s["rejected_tuples"]
                rates[q].append(s["mean_rate_tuples_s"])
                print(f"{case} {q}: {rates[q][-1]:,.0f} {rec.kind}/s", flush=True)
        ref = statistics.median(rates[predictors[0]])
        shape = "x".join(str(d) for d in next(iter(rec.arrays.values())).shape[1:])
        for q, v in rates.items():
            m = statistics.median(v)
            rows.append(f"| {case} | {len(rec) * repeat:,} {rec.kind} ({shape}) | {size} | {q} | {m:,.0f} | "
                        f"{', '.join(f'{x:,.0f}' for x in v)} | {ref / m:.2f} | {target:,} | "
                        f"{'met' if q == predictors[0] and m >= target else ('-' if q != predictors[0] else 'NOT met')} |")
        if lost:
            rows.append(f"| {case} | LOST {lost} items | | | | | | | |")
    head = ("| case | data | items/packet | predictor | median items/s | runs | default's speed-up vs this | target | "
            "target |\n|---|---|---|---|---|---|---|---|---|")
    print(head + "\n" + "\n".join(r for rows in by_case.values() for r in rows))
    if not args.no_write:
        # cases not run now keep their rows from the run that made them (each row group says which)
        store = ROOT / "bench" / "results" / "bench_modalities.json"
        kept = json.loads(store.read_text()) if store.is_file() else {}
        for case, rows in by_case.items():
            kept[case] = {"rows": rows, "command": cmd, "load": round(load, 1), "rounds": args.rounds}
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(kept, indent=1))
        order = [c for c in CASES if c in kept] + [c for c in kept if c not in CASES]
        table = head + "\n" + "\n".join(r for c in order for r in kept[c]["rows"])
        made: dict[str, list[str]] = {}
        for c in order:
            made.setdefault(f"{kept[c]['command']} (median of {kept[c]['rounds']} runs per predictor, alternating; "
                            f"load average {kept[c]['load']} at the end)", []).append(c)
        lines = "\n".join(f"- {', '.join(cs)}: {what}" for what, cs in made.items())
        write_sections(ROOT / "bench" / "RESULTS.md", {SECTION: (
            f"{SECTION}\n\nReplay -> sink -> {args.workers} worker processes on this 2-core VM (other sessions share "
            f"the cores), no --out. Commands:\n\n{lines}\n\n{table}\n")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
