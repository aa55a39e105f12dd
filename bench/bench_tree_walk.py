"""The compiled boosters' AVX-512 walk against their scalar walk, side by side in one run.

    .venv/bin/python bench/bench_tree_walk.py --rounds 5

Two parts, both alternating the two walks (``STREAMER_TREES_VECTOR`` = 1 / 0) round by round:

1. each shipped booster built with the vector walk (single output, depth <= 6), in process, on
   600 and 1,000 random rows (the walk is branch-free: its cost does not depend on the values),
   with a bit-identity check of the two walks' outputs, with and without missing values;
2. the MINFLUX live pipeline end to end (replay -> sink -> ``--workers`` worker processes), the
   ``minflux-live`` stream of ``bench/bench_modalities.py`` in packets of 1,000, predictors
   ``general`` and ``static``; the environment variable reaches the workers at their start.

Writes the "## Compiled boosters: AVX-512 walk" section of bench/RESULTS.md (not with --no-write).
Needs a CPU with AVX-512F; elsewhere it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.commands import simulation  # noqa: E402
from streamer.core import registry  # noqa: E402
from streamer.core.backends import CompiledBackend  # noqa: E402
from streamer.core.compile import ensure_library  # noqa: E402
from streamer.core.results_md import write_sections  # noqa: E402
from streamer.pipeline.launcher import run_local_pipeline  # noqa: E402

SECTION = "## Compiled boosters: AVX-512 walk"
ENV = "STREAMER_TREES_VECTOR"
STREAM = ["--regime", "dynamic", "--traces", "1000", "--tuples-per-trace", "1000"]


def boosters() -> list[tuple[str, CompiledBackend]]:
    out = []
    for path in sorted((ROOT / "compiled_models").glob("*/*/*.ubj")):
        b = CompiledBackend(ensure_library(path))
        if b.vector_built:
            out.append((str(path.relative_to(ROOT / "compiled_models")), b))
    return out


def time_walk(b: CompiledBackend, X: np.ndarray, on: int, reps: int) -> float:
    b.set_vector(bool(on))
    b.predict(X)
    t = time.perf_counter()
    for _ in range(reps):
        b.predict(X)
    return (time.perf_counter() - t) / reps * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--packet-size", type=int, default=1000)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    cmd = "`.venv/bin/python bench/bench_tree_walk.py " + " ".join(map(shlex.quote, sys.argv[1:])) + "`"
    found = boosters()
    if not found or not found[0][1].set_vector(True):
        print("this CPU has no AVX-512F: only the scalar walk runs here")
        return 0
    rng = np.random.default_rng(20261202)
    rows = ["| booster | trees | depth | rows | vector (us) | scalar (us) | scalar / vector | bit-identical |",
            "|---|---|---|---|---|---|---|---|"]
    for name, b in found:
        info = Path(str(b.library) + ".json")  # written beside the library when it was built
        meta = json.loads(info.read_text()) if info.is_file() else {}
        for n in (600, 1000):
            X = rng.normal(0.0, 3.0, size=(n, b.num_feature)).astype(np.float32)
            Xnan = X.copy()
            Xnan[rng.random(X.shape) < 0.01] = np.nan  # the missing-value directions are checked too
            same = True
            for x in (X, Xnan):
                b.set_vector(True)
                a = b.predict(x)
                b.set_vector(False)
                same &= np.array_equal(a.view(np.uint32), b.predict(x).view(np.uint32))
            t = {1: [], 0: []}
            for r in range(args.rounds):
                for on in ((1, 0) if r % 2 == 0 else (0, 1)):
                    t[on].append(time_walk(b, X, on, 100))
            v, s = statistics.median(t[1]), statistics.median(t[0])
            rows.append(f"| {name} | {meta.get('num_tree', '')} | {meta.get('depth', '')} | {n} | {v:.1f} | "
                        f"{s:.1f} | {s / v:.2f} | {'yes' if same else 'NO'} |")
            print(rows[-1], flush=True)
    rec = simulation.recording(registry.get("minflux"), STREAM)
    rates: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        for q in ("general", "static"):
            for on in ((1, 0) if r % 2 == 0 else (0, 1)):
                os.environ[ENV] = str(on)
                s = run_local_pipeline(rec, workers=args.workers, predictor=f"minflux:{q}",
                                       packet_size=args.packet_size, repeat=3)
                if s["tuples"] != s["publisher"]["tuples"]:
                    raise SystemExit(f"lost tuples: {s['publisher']['tuples'] - s['tuples']}")
                rates.setdefault((q, on), []).append(s["mean_rate_tuples_s"])
                print(f"{q} vector={on}: {rates[(q, on)][-1]:,.0f} tuples/s", flush=True)
    os.environ.pop(ENV, None)
    e2e = ["| predictor | walk | median tuples/s | runs | vector / scalar (paired median) |", "|---|---|---|---|---|"]
    for q in ("general", "static"):
        paired = statistics.median(a / b for a, b in zip(rates[(q, 1)], rates[(q, 0)]))
        for on in (1, 0):
            v = rates[(q, on)]
            e2e.append(f"| {q} | {'AVX-512' if on else 'scalar'} | {statistics.median(v):,.0f} | "
                       f"{', '.join(f'{x:,.0f}' for x in v)} | {f'{paired:.2f}' if on else ''} |")
    text = ("\n".join(rows) + f"\n\nEnd to end: 3,000,000 MINFLUX tuples (the minflux-live stream) in packets of "
            f"{args.packet_size:,}, {args.workers} workers, {args.rounds} rounds alternating the walk:\n\n"
            + "\n".join(e2e))
    print(text)
    if not args.no_write:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "unknown CPU")
        write_sections(ROOT / "bench" / "RESULTS.md", {SECTION: (
            f"{SECTION}\n\n{cmd} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu}, "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end). In process, one "
            f"thread, median of {args.rounds} rounds of 100 calls:\n\n{text}\n")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
