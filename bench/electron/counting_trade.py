"""Electron counting: second counts against efficiency as the pair stage's cut tightens (issue 16).

    .venv/bin/python bench/electron/counting_trade.py [--dense 24] [--sparse 4000] [--no-write]

The issue asks that no electron in dense 576x576 frames (~2,900 e-) be counted twice, and reports
efficiency there without a target. The shipped bundle merges two kept detections when the pair
classifier gives them P(same electron) >= ``merge_p`` (0.3, and only pairs whose weaker member
scored < 0.9); a worker started with ``STREAMER_ELECTRON_MERGE_P=p`` merges every pair within the
window at ``p``. This measures that trade on held-out test frames (the evaluation's pool of 23,000
distinct held-out tracks: :func:`streamer.modalities.electron.evaluate.held_out_pool`), through the
worker's predictor, one row per cut: dense efficiency (overall and by local occupancy), electrons
counted twice, and on sparse 100x100 frames (10 e-) the efficiency whose target is 98 %.
Writes "## Electron: the counting trade (issue 16)" in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from streamer.core.results_md import write_sections  # noqa: E402

SECTION = "## Electron: the counting trade (issue 16)"
CUTS = ("", "0.1", "0.05", "0.03", "0.02", "0.015", "0.01", "0.005", "0")
OCCUPANCY = ((0, 0), (1, 1), (2, 2), (3, 4), (5, 99))


def _run(predictor, fr, chunk: int) -> tuple[float, int, np.ndarray]:
    """(efficiency, electrons counted twice, matched per true electron) of ``predictor`` on ``fr``,
    ``chunk`` frames per packet."""
    from streamer.core.evaluation import predict_in_packets
    from streamer.modalities.electron.instrument_bench import unmarked
    from streamer.modalities.electron.metrics import double_counts, match

    det = predict_in_packets(unmarked(predictor, {"adu_per_e": fr.adu_per_e, "offset": fr.offset}), fr.frames, chunk)
    m = match(det["item"], det["x"], det["y"], fr.truth_item, fr.truth_x, fr.truth_y)
    return (float((m >= 0).mean()), double_counts(det["item"], det["x"], det["y"], fr.truth_item, fr.truth_x,
                                                  fr.truth_y, m), m >= 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense", type=int, default=24, help="576x576 test frames (~2,927 e- each)")
    ap.add_argument("--sparse", type=int, default=4000, help="100x100 test frames (10 e- each)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from streamer.modalities.electron.evaluate import held_out_pool
    from streamer.modalities.electron.metrics import local_occupancy
    from streamer.modalities.electron.model import load_bundle
    from streamer.modalities.electron.predictor import MERGE_ENV, make_predictor
    from streamer.modalities.electron.simulate import simulate_frames

    t0 = time.time()
    manifest = load_bundle()
    lib, idx = held_out_pool(manifest)
    dense = simulate_frames(lib, args.dense, 576, 576, rate=2927.0, seed=4401, lib_indices=idx)
    sparse = simulate_frames(lib, args.sparse, 100, 100, rate=10.0, seed=4402, lib_indices=idx)
    occ = local_occupancy(dense.truth_item, dense.truth_x, dense.truth_y, 10.0)
    rows, model_id = [], None
    for cut in CUTS:
        os.environ[MERGE_ENV] = cut
        p = make_predictor("trees")
        model_id = model_id or p.model_id  # the first cut is the bundle's own
        e_d, twice_d, ok = _run(p, dense, 4)
        e_s, twice_s, _ = _run(p, sparse, 500)
        by_occ = [float(ok[(occ >= lo) & (occ <= hi)].mean()) for lo, hi in OCCUPANCY]
        label = (f"shipped ({manifest['detect']['merge_p']:g}, pairs whose weaker member scored < "
                 f"{manifest['detect']['merge_below']:g})" if not cut else f"{cut}, every pair")
        rows.append((label, e_d, twice_d, by_occ, e_s, twice_s))
        print(rows[-1], flush=True)
    os.environ.pop(MERGE_ENV, None)
    n_d, n_s = len(dense.truth_x), len(sparse.truth_x)
    occ_head = " | ".join(f"occupancy {lo}" if lo == hi else (f"{lo}-{hi}" if hi < 99 else f">= {lo}")
                          for lo, hi in OCCUPANCY)
    lines = [f"| merge_p (`{MERGE_ENV}`) | dense efficiency | dense counted twice | {occ_head} | "
             "sparse efficiency | sparse counted twice |", "|" + "---|" * (6 + len(OCCUPANCY) - 1)]
    for label, e_d, twice_d, by_occ, e_s, twice_s in rows:
        lines.append(f"| {label} | {e_d:.4f} | {twice_d} ({twice_d / n_d:.3%}) | "
                     + " | ".join(f"{v:.3f}" for v in by_occ) + f" | {e_s:.4f} | {twice_s} |")
    occ_n = " / ".join(str(int(((occ >= lo) & (occ <= hi)).sum())) for lo, hi in OCCUPANCY)
    cmd = "`.venv/bin/python bench/electron/counting_trade.py " + " ".join(map(shlex.quote, sys.argv[1:])) + "`"
    body = (f"{SECTION}\n\n{cmd} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.time() - t0:.0f} s; "
            f"model `{model_id}`). Held-out test frames from the evaluation's pool of "
            f"23,000 distinct tracks: {args.dense} dense 576x576 frames ({n_d:,} electrons; by local occupancy "
            f"= other entries within 10 px: {occ_n}) and {args.sparse:,} sparse 100x100 frames ({n_s:,} "
            "electrons), through the worker's predictor; counted twice = a detection left unmatched whose "
            "true entries within 6 px are all matched already (`metrics.double_counts`).\n\n"
            + "\n".join(lines))
    print(body)
    if not args.no_write:
        write_sections(ROOT / "bench" / "RESULTS.md", {SECTION: body})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
