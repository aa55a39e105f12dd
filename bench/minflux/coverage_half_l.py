"""Issue 15: per-tuple interval coverage of the general MINFLUX bundle across the beam pattern's L/2.

    .venv/bin/python bench/minflux/coverage_half_l.py --against a1ad8e1
    .venv/bin/python bench/minflux/coverage_half_l.py --quick --no-write     # a smoke run

The issue's grid (distance x v0 x background x photons) is graded at L/2 = 15 nm; a user's pattern
can sit anywhere in the instrument's range (10-25 nm). This runs the grid on development seeds
(never the test grid's 1515) at several L/2, one tuple per ruler (independent tuples: coverage
s.e. ~0.007 at 2,000 rulers per cell), with the true instrument, for the bundle here and -- side by
side, same tuples -- the bundle's calibration at another git revision (``--against``: its
manifest, the boosters and tables of this checkout). Per L/2: eligible cells (RMS CRB < d) whose
coverage is outside 85-95 %, the coverage range, the mean |coverage - 0.9| and the mean width.
Writes "## MINFLUX per-tuple coverage across L/2 (issue 15)" in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SECTION = "## MINFLUX per-tuple coverage across L/2 (issue 15)"
BUNDLE = ROOT / "compiled_models" / "minflux" / "general"


def bundle_at(rev: str, tmp: Path) -> Path:
    """A copy of the bundle directory whose manifest is the one at git revision ``rev``."""
    out = tmp / f"general-{rev}"
    shutil.copytree(BUNDLE, out)
    manifest = subprocess.run(["git", "show", f"{rev}:compiled_models/minflux/general/manifest.json"], cwd=ROOT,
                              check=True, capture_output=True).stdout
    (out / "manifest.json").write_bytes(manifest)
    return out


def coverage_rows(predictors: dict, seed: int, half_l: float, rulers: int) -> dict:
    """Per predictor: (coverage, width) of every eligible cell of the grid at ``half_l``."""
    from streamer.modalities.minflux import offgrid
    from streamer.modalities.minflux.crb import crb_for_recording
    from streamer.modalities.minflux.offgrid import _error_stats

    rec, cells = offgrid.simulate_grid(rulers, 1, seed, half_l=half_l)
    y, cell = rec.truth["d_nm"], rec.truth["cell"]
    crb = crb_for_recording(rec.truth, rec.tuples.positions)
    groups = [np.flatnonzero(cell == i) for i in range(len(cells))]
    eligible = [i for i, (d, *_) in enumerate(cells) if np.sqrt(np.mean(crb[groups[i]] ** 2)) < d]
    out = {}
    for name, p in predictors.items():
        pred = p.predict_with(rec.tuples, rec.truth["v0"], rec.truth["background"])
        stats = [_error_stats(pred.distance[groups[i]], pred.lower[groups[i]], pred.upper[groups[i]], y[groups[i]])
                 for i in eligible]
        out[name] = (np.array([s["coverage"] for s in stats]), np.array([s["width"] for s in stats]),
                     [cells[i] for i in eligible])
    return out


def main(argv=None) -> int:
    from streamer.core.results_md import write_sections
    from streamer.modalities.minflux.general import GeneralPredictor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", default="HEAD", help="git revision whose calibration runs side by side")
    p.add_argument("--seeds", type=int, nargs="+", default=[4242, 4343])
    p.add_argument("--half-l", type=float, nargs="+", default=[11.0, 15.0, 20.0, 25.0])
    p.add_argument("--rulers", type=int, default=2000, help="rulers (one tuple each) per cell")
    p.add_argument("--quick", action="store_true", help="200 rulers per cell, one seed, L/2 15 only")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.half_l, args.rulers = args.seeds[:1], [15.0], 200
    if 1515 in args.seeds:
        raise SystemExit("1515 is the test grid's seed: development seeds only")
    cmd = "`.venv/bin/python bench/minflux/coverage_half_l.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])) + "`"
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        here = GeneralPredictor(BUNDLE)
        rev = subprocess.run(["git", "rev-parse", "--short", args.against], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
        other = GeneralPredictor(bundle_at(args.against, Path(tmp)))
        preds = {"this checkout": here, rev: other}
        rows = []
        for seed in args.seeds:
            for hl in args.half_l:
                res = coverage_rows(preds, seed, hl, args.rulers)
                for name, (cov, wid, cells) in res.items():
                    out = [(c, cells[j]) for j, c in enumerate(cov) if not 0.85 <= c <= 0.95]
                    worst = ", ".join(f"{c[0]:g} nm / {c[1]:g} / {c[2]:g} / {c[3]:g}: {v:.3f}" for v, c in out[:3])
                    rows.append(f"| {seed} | {hl:g} | {name} | {len(cov)} | {len(out)} | {cov.min():.3f}-{cov.max():.3f} "
                                f"| {np.mean(np.abs(cov - 0.9)):.4f} | {np.mean(wid):.2f} | {worst or '-'} |")
                    print(rows[-1], flush=True)
    head = ("| seed | L/2 (nm) | calibration | eligible cells | outside 85-95 % | coverage range | mean abs(cov - 0.9) "
            "| mean width (nm) | cells outside (d / v0 / b / photons) |\n|---|---|---|---|---|---|---|---|---|")
    text = (f"{SECTION}\n\nCommand: {cmd} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{time.time() - t0:.0f} s on 2 cores). The issue's grid on development seeds at several L/2 of the beam "
            f"pattern, {args.rulers} rulers of one tuple per cell, true instrument; 'this checkout' and the "
            f"calibration of {rev}{'' if args.against == rev else f' ({args.against})'} predict the same tuples.\n\n{head}\n" + "\n".join(rows) + "\n")
    print(text)
    if not args.no_write:
        write_sections(ROOT / "bench" / "RESULTS.md", {SECTION: text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
