"""Issue 15 benchmark: the instrument-aware MINFLUX model off its training grid, self-calibration, per-trace.

    .venv/bin/python bench/minflux/offgrid.py                 # full run (~5-10 min on 2 busy cores)
    .venv/bin/python bench/minflux/offgrid.py --quick         # smaller, for a smoke test

Writes the "## MINFLUX off the training grid (issue 15)" section of bench/RESULTS.md and the raw
numbers to bench/results/minflux_offgrid.json. Same code as `streamer evaluate --regime general`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from streamer.core.results_md import write_sections
    from streamer.modalities.minflux.verbs import evaluate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    args = p.parse_args(argv)
    command = "python bench/minflux/offgrid.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    body, raw = evaluate.general_block(command.strip(), quick=args.quick)
    print(body)
    if not args.no_write:
        write_sections(args.results, {evaluate.GENERAL_SECTION: f"{evaluate.GENERAL_SECTION}\n\n{body}"})
        out = ROOT / "bench" / "results" / "minflux_offgrid.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(raw, indent=1, default=float) + "\n")
        print(f"wrote {args.results} and {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
