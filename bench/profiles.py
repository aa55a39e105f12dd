"""Instrument profiles (issue 14): a model for instrument A on data of instrument B is flagged, not
silently wrong; after ``streamer calibrate`` + ``streamer train --instrument`` for B it meets A's targets.

    .venv/bin/python bench/profiles.py                      # every modality that has the bench
    .venv/bin/python bench/profiles.py --modality diffusion --quick

Each modality with a profile bench (``commands.instrument_bench(workdir, quick)``) runs its own
steps and returns a row; the table goes to "## Instrument profiles (issue 14)" in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.core import registry  # noqa: E402
from streamer.core.results_md import write_sections  # noqa: E402

SECTION = "## Instrument profiles (issue 14)"
COLUMNS = ["modality", "A -> B", "A's model on B", "calibration", "training", "B's model on B", "A's model on A"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modality", action="append", default=None)
    p.add_argument("--quick", action="store_true", help="small sets (a smoke run, not the figures)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    names = args.modality or [n for n in registry.names() if hasattr(registry.get(n).commands, "instrument_bench")]
    rows = []
    for name in names:
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix=f"profiles-{name}-") as tmp:
            row = registry.get(name).commands.instrument_bench(Path(tmp), args.quick)
        row["wall"] = f"{time.time() - t0:.0f} s"
        rows.append(row)
        print({k: v for k, v in row.items() if k != "detail"}, flush=True)
    if not args.no_write and not args.quick:  # rows of the modalities not run this time are kept
        store = ROOT / "bench" / "results" / "profiles.json"
        cmd = "`.venv/bin/python bench/profiles.py " + " ".join(map(shlex.quote, sys.argv[1:])) + "`"
        for r in rows:
            r["command"] = cmd
        kept = json.loads(store.read_text()) if store.is_file() else []
        rows = sorted([r for r in kept if r["modality"] not in names] + rows, key=lambda r: r["modality"])
        store.write_text(json.dumps(rows, indent=1))
    table = ("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
             + "\n".join("| " + " | ".join(str(r.get(c, "-")) for c in COLUMNS) + " |" for r in rows))
    details = "\n\n".join(f"{r['detail']}\n\n(command: {r.get('command', '-')}, {r['wall']})" for r in rows
                          if r.get("detail"))
    print(table)
    if not args.no_write and not args.quick:
        write_sections(ROOT / "bench" / "RESULTS.md", {SECTION: f"{SECTION}\n\nCommand: `.venv/bin/python "
                       f"bench/profiles.py [--modality NAME]` (each row's own command and wall time are under its "
                       f"detail; last written {time.strftime('%Y-%m-%d %H:%M')} UTC, 2-core VM shared with other "
                       f"jobs: training times are wall clock under that load).\n\n{table}\n\n{details}\n"})
    return 0 if all(str(r.get("B's model on B", "")).startswith("PASS") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
