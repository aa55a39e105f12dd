"""The linear pooled visibility (traces.v0_from_sums) against the squared form it replaced, on the
same development streams: the self-calibration's v0 and the per-trace distance.

Both forms come from the same running sums (the partials' first four columns are the squared
form's), so one pass per stream scores both. The model is not run (neither form uses it).
Development seeds only (the evaluation's are 1515, 2727, 3939, 5151, 7777).

    .venv/bin/python bench/minflux/visibility_probe.py [--streams 100] [--seeds 4747 4848]
"""

from __future__ import annotations

import argparse

import numpy as np

from streamer.modalities.minflux import offgrid, partials, physics, traces
from streamer.modalities.minflux.live import LivePredictor
from streamer.modalities.minflux.prediction import Prediction

INSTRUMENTS = ((0.85, 6.0), (0.85, 0.5), (0.93, 2.0), (1.0, 6.0))


def _run(rec):
    """The stream through a self-calibrating predictor whose model is skipped: its stream state, and
    the squared-form v0 of the same stream (the merged calibration of its partials' first four
    columns, the form partials persisted before the v0 columns are read with)."""
    lp = LivePredictor()

    def no_model(batch, state, v0, bg, totals):
        z = np.full(len(batch), np.nan, np.float32)
        return Prediction(z, z, z, np.zeros(len(batch), np.uint8), "none")

    lp._two_on_only = no_model
    outs = [lp.process("s", rec.tuples[i:i + 1000]) for i in range(0, len(rec), 1000)]
    part = {k: np.concatenate([o[k] for o in outs]) for k in ("part_trace", "part_kind", "part_n", "part_sums")}
    squared = partials.calibration(part["part_trace"], part["part_kind"], part["part_n"],
                                   part["part_sums"][..., :traces.LEGACY_SUM_COLUMNS])["v0"]
    return lp.streams["s"], squared


def v0_crb(rec, v0: float, b: float) -> float:
    """Cramer-Rao bound (s.d.) of v0 from all truly 1-on tuples of a stream, each with its own free
    amplitude and emitter position (x, y), b known: the efficient information of v0 summed."""
    t = rec.truth
    one = t["state"] == 1
    pos = rec.tuples.positions[one].astype(float)
    sep = np.stack([t["d_nm"] * np.cos(t["theta"]), t["d_nm"] * np.sin(t["theta"])], axis=1)[one]
    x = pos[:, :, 1] + t["mid_nm"][one] - sep / 2  # emitter 1 (the survivor) per axis
    A = t["amplitude"][one][:, None, None]
    a = float(physics.a_from_v0(v0))
    da_dv = float((physics.a_from_v0(v0 + 1e-6) - physics.a_from_v0(v0 - 1e-6)) / 2e-6)
    ku = physics.K_NM * (x[:, :, None] - pos)
    mu = A * (1 + a * a - 2 * a * np.cos(ku)) + b
    n = len(mu)
    J = np.zeros((n, 2, 3, 4))  # d mu / d (A, x, y, v0)
    J[..., 0] = (1 + a * a - 2 * a * np.cos(ku))
    J[:, 0, :, 1] = (A * 2 * a * physics.K_NM * np.sin(ku))[:, 0]
    J[:, 1, :, 2] = (A * 2 * a * physics.K_NM * np.sin(ku))[:, 1]
    J[..., 3] = A * (2 * a - 2 * np.cos(ku)) * da_dv
    F = np.einsum("nake,naki->nei", J / mu[..., None], J)
    eff = F[:, 3, 3] - np.einsum("ne,ne->n", F[:, 3, :3], np.linalg.solve(F[:, :3, :3], F[:, :3, 3:])[..., 0])
    return float(1.0 / np.sqrt(eff.sum()))


def v0_table(n: int) -> str:
    rows = ["| v0 | b | streams | linear: mean error | s.d. | max abs | squared: mean error | s.d. | max abs | "
            "s.d. ratio | CRB (s.d.) | linear s.d. / CRB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v0, b in INSTRUMENTS:
        lin, sq, crb = [], [], []
        for k in range(n):
            rec = offgrid.simulate_stream(v0, b, 4000, 90000 + k)
            st, v_sq = _run(rec)
            lin.append(st.cal.v0 - v0), sq.append(v_sq - v0)
            if v0 < 1:  # v0 = 1 is the boundary of the parameter space: no Cramer-Rao bound there
                crb.append(v0_crb(rec, v0, b))
        lin, sq = np.array(lin), np.array(sq)
        c = float(np.sqrt(np.mean(np.square(crb)))) if crb else float("nan")
        rows.append(f"| {v0} | {b} | {n} | {lin.mean():+.4f} | {lin.std(ddof=1):.4f} | {np.abs(lin).max():.4f} | "
                    f"{sq.mean():+.4f} | {sq.std(ddof=1):.4f} | {np.abs(sq).max():.4f} | "
                    f"{lin.std(ddof=1) / sq.std(ddof=1):.2f} | "
                    + (f"{c:.5f} | {lin.std(ddof=1) / c:.2f} |" if crb else "- (boundary) | - |"))
    return "\n".join(rows)


def trace_table(n: int, seeds: list[int]) -> str:
    recs = []
    for seed in seeds:
        for _, v0, bg, rec in offgrid._random_streams(n, 4000, seed):
            st, v_sq = _run(rec)
            cal = st.cal
            v_lin, v_sq = min(cal.v0, 1.0), min(v_sq, 1.0)
            for tr, acc in st.traces.traces.items():
                blocks = np.asarray(acc.blocks).reshape(-1, 2, traces.SUM_COLUMNS)
                nb = np.full(len(blocks), float(st.traces.block))
                b_t, b_se = cal.trace_background_se(tr)
                old = (blocks[..., :4], acc.cur[:, :4])
                recs.append({"d": offgrid.D_GRID[tr], "v0_lin": cal.v0 - v0, "v0_sq": v_sq - v0,
                             "true_lin": traces.estimate_from_blocks(blocks, nb, acc.cur, acc.cur_n, v0, bg),
                             "true_sq": traces.estimate_from_blocks(*old[:1], nb, old[1], acc.cur_n, v0, bg),
                             "self_lin": traces.estimate_from_blocks(blocks, nb, acc.cur, acc.cur_n, v_lin, b_t,
                                                                     cal.v0_se, b_se)})
    out = ["| d (nm) | traces | true, linear: bias (s.e.) | RMSE | coverage | width | true, squared: bias (s.e.) | "
           "RMSE | coverage | width | self-calibrated, linear: bias (s.e.) | RMSE | coverage |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in offgrid.D_GRID:
        rs = [r for r in recs if r["d"] == d]
        cells = [f"{d:g}", str(len(rs))]
        for key in ("true_lin", "true_sq", "self_lin"):
            e = np.array([r[key] for r in rs])
            err = e[:, 0] - d
            cov = np.mean((e[:, 1] <= d) & (d <= e[:, 2]))
            cells += [f"{err.mean():+.2f} ({err.std(ddof=1) / np.sqrt(len(err)):.2f})",
                      f"{np.sqrt(np.mean(err ** 2)):.2f}", f"{cov:.3f}"]
            if key != "self_lin":
                cells.append(f"{np.nanmean(e[:, 2] - e[:, 1]):.1f}")
        out.append("| " + " | ".join(cells) + " |")
    per_stream = recs[::len(offgrid.D_GRID)]
    lin = np.array([r["v0_lin"] for r in per_stream])
    sq = np.array([r["v0_sq"] for r in per_stream])
    out.append(f"\nThe same {len(per_stream)} streams' v0 (uniform 0.85-1): linear s.d. {lin.std(ddof=1):.4f}, max abs "
               f"{np.abs(lin).max():.4f}; squared s.d. {sq.std(ddof=1):.4f}, max abs {np.abs(sq).max():.4f}.")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=100, help="random streams per seed (per-trace table)")
    p.add_argument("--v0-streams", type=int, default=20, help="streams per instrument (v0 table)")
    p.add_argument("--seeds", type=int, nargs="+", default=[4747, 4848])
    a = p.parse_args()
    print(v0_table(a.v0_streams))
    print()
    print(trace_table(a.streams, a.seeds))


if __name__ == "__main__":
    main()
