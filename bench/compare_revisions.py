"""End-to-end MINFLUX throughput of two git revisions, side by side in one run (ratios, not absolutes).

    .venv/bin/python bench/compare_revisions.py b842bd8 HEAD --rounds 5

Each revision is checked out (``git worktree``) into a temporary folder and run with this venv's
packages through ``PYTHONPATH`` (its own ``streamer`` wins over the editable install); its model
libraries are compiled there once. Every round runs ``streamer run --simulate static`` for each
revision (``--regime dynamic --predictor minflux:general``: the self-calibrating predictor on dynamic
traces), alternating the order, with identical data (same seed) and settings; the table gives the
median tuples/s at the sink and the ratio of each revision to the first. Appends the table to the
"## Layout comparison" section of bench/RESULTS.md with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.core.results_md import write_sections  # noqa: E402

SECTION = "## Layout comparison"


def checkout(rev: str, into: Path) -> Path:
    path = into / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), rev], check=True,
                   capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(path)}
    subprocess.run([sys.executable, "-m", "streamer.cli", "compile", "--missing-ok", "--no-calibrate",
                    "--parity-rows", "0", "--models-dir", str(path / "compiled_models")],
                   cwd=path, env=env, check=True, capture_output=True)
    return path


def run_once(path: Path, args: argparse.Namespace, out: Path, persist: Path | None = None) -> float:
    env = {**os.environ, "PYTHONPATH": str(path)}
    cmd = [sys.executable, "-m", "streamer.cli", "run", "--simulate", args.regime, "--traces", str(args.traces),
           "--tuples-per-trace", str(args.tuples_per_trace), "--seed", "7", "--packet-size", str(args.packet_size),
           "--repeat", str(args.repeat), "-w", "2", "--json", str(out)] + (["--out", str(persist)] if persist else []) + (
        ["--predictor", args.predictor] if args.predictor else [])
    subprocess.run(cmd, cwd=path, env=env, check=True, capture_output=True, timeout=900)
    s = json.loads(out.read_text())
    assert s["tuples"] == s["publisher"]["tuples"], "lost tuples"
    return s["mean_rate_tuples_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("revisions", nargs="+", help="git revisions; the first is the reference")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--traces", type=int, default=200)
    p.add_argument("--tuples-per-trace", type=int, default=1000)
    p.add_argument("--packet-size", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--persist", action="append", default=[], metavar="REV",
                   help="run this revision with --out (results persisted) too")
    p.add_argument("--section", default=SECTION)
    p.add_argument("--regime", default="static", choices=("static", "dynamic"), help="what --simulate replays")
    p.add_argument("--predictor", default=None, help="[modality:]name the workers serve (default: the shipped one)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="streamer-revs-") as tmp:
        tmp = Path(tmp)
        paths = {rev: checkout(rev, tmp) for rev in args.revisions}
        try:
            rates: dict[str, list[float]] = {rev: [] for rev in args.revisions}
            for r in range(args.rounds):
                for rev in (args.revisions if r % 2 == 0 else args.revisions[::-1]):
                    persist = tmp / f"out-{rev}-{r}" if rev in args.persist else None
                    rates[rev].append(run_once(paths[rev], args, tmp / "s.json", persist))
                    print(f"round {r}: {rev} {rates[rev][-1]:,.0f} tuples/s", flush=True)
        finally:
            for path in paths.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)
    ref = statistics.median(rates[args.revisions[0]])
    sha = {rev: subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True)
           .stdout.strip() for rev in args.revisions}
    lines = ["| revision | median tuples/s (sink) | runs | ratio to " + args.revisions[0] + " |", "|---|---|---|---|"]
    for rev, v in rates.items():
        lines.append(f"| {rev} ({sha[rev]}){' with --out' if rev in args.persist else ''} | {statistics.median(v):,.0f} | "
                     f"{', '.join(f'{x / 1e3:,.0f}k' for x in v)} | {statistics.median(v) / ref:.3f} |")
    same = [rev for rev in args.revisions if rev not in args.persist and rev != args.revisions[0]
            and any(sha[rev] == sha[o] for o in args.persist)]
    if same:  # one commit run with and without --out: say so, the labels alone do not
        lines.append(f"\n{', '.join(same)} and {', '.join(args.persist)} are the same commit; the rows differ only in "
                     "--out (results persisted as Parquet, acknowledged).")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        cmd = "  ".join(["`.venv/bin/python bench/compare_revisions.py", *map(shlex.quote, sys.argv[1:])]) + "`"
        served = f"predictor {args.predictor}" if args.predictor else "trained static model"
        body = (f"MINFLUX end to end (`streamer run --simulate {args.regime}`, {args.traces * args.tuples_per_trace:,} tuples x "
                f"{args.repeat}, packets of {args.packet_size}, 2 workers, {served}), {args.rounds} "
                f"rounds alternating the order, same machine, same run. Command: {cmd}\n\n{table}\n")
        write_sections(ROOT / "bench" / "RESULTS.md", {args.section: f"{args.section}\n\n{body}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
