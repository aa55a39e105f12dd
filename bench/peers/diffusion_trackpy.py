"""Diffusion coefficient side by side: trackpy (locate + link + MSD fit, the "trajectory-D" users run)
vs our trees predictor and our own track baselines on identical simulated stacks (seed 001 physics).
Writes ``## Peers: diffusion vs trackpy`` in bench/RESULTS.md.

    .venv/bin/python bench/peers/diffusion_trackpy.py [--quick]

trackpy is an optional peer (``pip install -e '.[peers]'``); nothing in the package imports this file.

Conventions (checked by tests/peers/test_peers_diffusion.py):
- trackpy: ``x`` is the column, ``y`` the row, in pixels, with pixel (row r, col c) centred on (x=c, y=r).
- ours (streamer/modalities/diffusion/physics.py): positions in nm from the image corner, pixel c spanning
  [c, c+1) * pixel_nm, so its centre is at (c + 0.5) * pixel_nm. Hence x_nm = (x_tp + 0.5) * pixel_nm
  (:func:`trackpy_to_nm`). D only uses displacements, so the half pixel cannot bias D, but the x/y order
  and the pixel size do matter and the test pins all three.

trackpy recipe (its walkthrough): ``tp.batch`` (diameter 5 px: the 250 nm FWHM spot is ~1.3 px, blurred by
motion at high D; ``topn=1``: one molecule per stack, the brightest feature per frame, the peer's best case),
``tp.link`` (search range 10 px, memory 3), ``tp.imsd`` (lags 1-4, um^2 with mpp and fps), then D = slope / 4
of a least-squares line MSD = 4 D t + c through lags 1-4 (the offset absorbs localisation error; motion blur
is not modelled, which biases D low by (1 - 2R) = 2/3 at lag 1 for a continuous exposure, less at longer lags).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dist_version, ours_version  # noqa: E402  (bench/peers/common.py)

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Peers: diffusion vs trackpy"
LAGS = 4
DIAMETER = 5
SEARCH_PX = 10
MEMORY = 3
GAP = MEMORY + 2  # empty frame numbers between stacks: links never cross from one stack to the next


def trackpy_to_nm(x_tp: np.ndarray, y_tp: np.ndarray, pixel_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """trackpy (x, y) in pixels (pixel centre = integer) -> our (x, y) in nm from the image corner."""
    return (np.asarray(x_tp, float) + 0.5) * pixel_nm, (np.asarray(y_tp, float) + 0.5) * pixel_nm


def msd_line_d(lag_s: np.ndarray, msd_um2: np.ndarray) -> float:
    """D (um^2/s) = slope / 4 of a least-squares line through (lag, 2D MSD); NaN if under 2 lags."""
    ok = np.isfinite(msd_um2)
    if ok.sum() < 2:
        return float("nan")
    t, m = lag_s[ok], msd_um2[ok]
    tc = t - t.mean()
    return float((m - m.mean()) @ tc / (tc @ tc) / 4.0)


def trackpy_d(stacks: np.ndarray, pixel_nm: float, frame_s: float, baseline: float,
              adu_per_photon: float) -> np.ndarray:
    """D (um^2/s) per stack (n, T, H, W) by trackpy; NaN where no track of >= 3 frames was linked.

    All stacks of a packet go through one ``tp.batch`` call (less per-call overhead, as a user would
    process a movie) with frame numbers spaced so that no link crosses two stacks."""
    import trackpy as tp

    tp.quiet()  # its per-frame link log would flood the run's output
    n, t = stacks.shape[:2]
    movie = (stacks.reshape(n * t, *stacks.shape[2:]).astype(np.float32) - baseline) / adu_per_photon
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = tp.batch(movie, diameter=DIAMETER, topn=1, processes=1, engine="numba")
        stack = f["frame"].to_numpy() // t
        f["stack"] = stack
        f["frame"] = stack * (t + GAP) + f["frame"].to_numpy() % t
        tr = tp.link(f, search_range=SEARCH_PX, memory=MEMORY)
        # one molecule per stack: keep its longest track
        size = tr.groupby("particle")["frame"].transform("size")
        tr = tr[size >= 3]
        longest = tr.assign(_n=size[size >= 3]).sort_values("_n", ascending=False).drop_duplicates("stack")
        tr = tr[tr["particle"].isin(longest["particle"])]
        im = tp.imsd(tr, mpp=pixel_nm / 1000.0, fps=1.0 / frame_s, max_lagtime=LAGS)
    out = np.full(n, np.nan)
    if len(im.columns):
        lag = im.index.to_numpy(float)
        owner = longest.set_index("particle")["stack"]
        for p in im.columns:
            out[int(owner[p])] = msd_line_d(lag, im[p].to_numpy(float))
    return out


def simulate_grid(per_cell: int, seed: int, chunk: int):
    """The evaluation grid of streamer.modalities.diffusion.evaluate (decades of D x photons), chunked."""
    from streamer.modalities.diffusion.physics import Optics, draw_grid, simulate

    op = Optics()
    rng = np.random.default_rng(seed)
    d, p, b = draw_grid(rng, per_cell)
    for a in range(0, len(d), chunk):
        sl = slice(a, a + chunk)
        yield op, d[sl], p[sl], simulate(rng, d[sl], p[sl], b[sl], op).stacks


def run(per_cell: int, seed: int = 11, chunk: int = 256, log=print) -> dict:
    from streamer.modalities.diffusion.evaluate import make_packet
    from streamer.modalities.diffusion.predictors import TrackBaseline, TreesPredictor

    ours = {"ours trees": TreesPredictor(), "ours trajectory-D (msd)": TrackBaseline("msd"),
            "ours CVE": TrackBaseline("cve")}
    est = {k: [] for k in ("trackpy", *ours)}
    secs = {k: 0.0 for k in est}
    ds, ps = [], []
    warm = True
    for i, (op, d, p, stacks) in enumerate(simulate_grid(per_cell, seed, chunk)):
        pk = make_packet(stacks, op, op.baseline, op.adu_per_photon, i)
        if warm:  # numba/compiled code loads outside the timed runs
            trackpy_d(stacks[:4], op.pixel_nm, op.frame_s, op.baseline, op.adu_per_photon)
            for pred in ours.values():
                pred.predict(make_packet(stacks[:4], op, op.baseline, op.adu_per_photon))
            warm = False
        t0 = time.perf_counter()
        est["trackpy"].append(trackpy_d(stacks, op.pixel_nm, op.frame_s, op.baseline, op.adu_per_photon))
        secs["trackpy"] += time.perf_counter() - t0
        for k, pred in ours.items():
            t0 = time.perf_counter()
            est[k].append(pred.predict(pk)["D"].astype(np.float64))
            secs[k] += time.perf_counter() - t0
        ds.append(d)
        ps.append(p)
        log(f"chunk {i}: {sum(map(len, ds))} stacks; trackpy {sum(map(len, est['trackpy'])) / secs['trackpy']:.0f} "
            f"stacks/s, trees {sum(map(len, ds)) / secs['ours trees']:.0f} stacks/s")
    d = np.concatenate(ds)
    return {"d": d, "photons": np.concatenate(ps), "est": {k: np.concatenate(v) for k, v in est.items()},
            "rate": {k: len(d) / s for k, s in secs.items()}}


def abs_log_err(d_hat: np.ndarray, d: np.ndarray) -> np.ndarray:
    """|ln(D_hat/D)| with estimates <= 0 floored as our predictors do; failures (NaN) stay NaN."""
    from streamer.modalities.diffusion.estimators import D_FLOOR

    return np.abs(np.log(np.maximum(d_hat, D_FLOOR) / d))


def table(res: dict) -> tuple[str, list[str]]:
    from streamer.modalities.diffusion.evaluate import DECADES, PHOTONS

    names = list(res["est"])
    lines = ["| D decade (um^2/s) | photons | n | " + " | ".join(f"{k} med abs log" for k in names)
             + " | trackpy bias (median D_hat/D) | trackpy failed |",
             "|---|---|---|" + "---|" * len(names) + "---|---|"]
    wins = []
    for lo, hi in DECADES:
        for ph in (*PHOTONS, None):
            m = (res["d"] >= lo) & (res["d"] < hi) & ((res["photons"] == ph) if ph else True)
            if not m.any():
                continue
            tp_d = res["est"]["trackpy"][m]
            fail = ~np.isfinite(tp_d)
            med = {}
            for k in names:
                e = abs_log_err(res["est"][k][m], res["d"][m])
                # a failed trackpy stack counts as an infinite error (it gave no D): median over all stacks
                med[k] = float(np.median(np.where(np.isfinite(e), e, np.inf)))
            ok = np.isfinite(tp_d)
            bias = (float(np.exp(np.median(np.log(np.maximum(tp_d[ok], 1e-4) / res["d"][m][ok]))))
                    if ok.any() else np.nan)
            tag = f"{ph:,.0f}" if ph else "all"
            lines.append(f"| {lo:g}-{hi:g} | {tag} | {m.sum()} | " + " | ".join(f"{med[k]:.3f}" for k in names)
                         + f" | {bias:.3f} | {fail.mean():.1%} |")
            if med["trackpy"] < med["ours trees"]:
                wins.append(f"D {lo:g}-{hi:g}, photons {tag}: trackpy {med['trackpy']:.3f} "
                            f"vs trees {med['ours trees']:.3f}")
    lines += ["", "| method | stacks/s, one core |", "|---|---|"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in res["rate"].items()]
    if res["rate"]["trackpy"] > res["rate"]["ours trees"]:
        wins.append(f"speed: trackpy {res['rate']['trackpy']:,.0f} vs trees {res['rate']['ours trees']:,.0f} stacks/s")
    return "\n".join(lines), wins


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30 stacks per cell (a smoke run)")
    ap.add_argument("--per-cell", type=int, default=None, help="stacks per (decade, photons) cell (default 200)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    a = ap.parse_args(argv)
    per_cell = a.per_cell or (30 if a.quick else 200)
    from streamer.core.results_md import write_sections
    from streamer.modalities.diffusion.predictors import TreesPredictor

    res = run(per_cell, a.seed)
    tab, wins = table(res)
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python bench/peers/diffusion_trackpy.py" + (" --quick" if a.quick else "")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = [SECTION, "",
            f"`{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; trackpy {dist_version('trackpy')}, "
            f"ours {ours_version()} model `{TreesPredictor().model_id}`; Python {platform.python_version()}; "
            f"1-min load average {load:.1f} on a shared 2-core machine). Identical simulated 16x64x64 stacks "
            f"(seed 001 physics: 200 nm pixels, 10 ms frames, continuous exposure, FWHM 250 nm, background 0.5-4 "
            f"photons/pixel), {per_cell} per (decade, photons) cell, D log-uniform in each decade, seed {a.seed}. "
            f"trackpy: `tp.batch` (diameter {DIAMETER}, topn 1, numba engine, one process) + `tp.link` (search "
            f"{SEARCH_PX} px, memory {MEMORY}) + `tp.imsd` (lags 1-{LAGS}) + D = slope/4 of a line through the MSD; "
            "the longest track per stack. Error: median |ln(D_hat/D)| (estimates <= 0 floored at 1e-4 um^2/s; a "
            "stack trackpy could not track counts as a miss). Ours: the `trees` predictor and the "
            "trajectory-D / CVE baselines of the diffusion modality on the same packets; timing covers each "
            "method's whole path from ADU stacks to D (trackpy includes locate, link, MSD and fit).", "",
            tab, "",
            "- trackpy's MSD line ignores motion blur and treats localisation error only through the line's "
            "offset: its bias (median D_hat/D) is most visible at high D, where blur dominates; its median error "
            "stays near that of our own MSD baseline at every D (the locator is not the limit, the MSD-line "
            "estimator is), while ours uses the blurred-track statistics the trees learned.",
            "- Where the peer wins: " + ("; ".join(wins) + "." if wins else "nowhere in this run."),
            ]
    write_sections(a.results, {SECTION: "\n".join(body)})
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
