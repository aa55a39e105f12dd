"""The issue-18 evaluation: per decade of D x photons {200, 1000, 5000}, all predictors on identical
simulated stacks, with the Cramer-Rao bound and interval coverage; plus predictor stacks/s per core."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import estimators as E
from .physics import GRID_BACKGROUND, GRID_DECADES, GRID_PHOTONS, Optics, blur_r, draw_grid, simulate

DECADES, PHOTONS, BACKGROUND = GRID_DECADES, GRID_PHOTONS, GRID_BACKGROUND


def make_packet(stacks: np.ndarray, op: Optics, baseline: float, adu: float, seq: int = 0):
    """A decoded packet as a worker would get it (bypasses the codec)."""
    from streamer.core.modality import Packet

    n, t, h, w = stacks.shape
    header = {"frames": t, "height": h, "width": w, "pixel_nm": op.pixel_nm, "frame_s": op.frame_s,
              "exposure_s": op.exposure, "baseline": baseline, "adu_per_photon": adu}
    return Packet("eval", seq, 0.0, "diffusion", "stacks", n, header, {"stacks": stacks})


@dataclass
class Rows:
    d: np.ndarray
    photons: np.ndarray
    background: np.ndarray
    d_path: np.ndarray
    out: dict  # predictor -> dict of result arrays


def run_grid(predictors: dict, per_cell: int = 700, seed: int = 7, op: Optics | None = None,
             chunk: int = 512) -> Rows:
    """Simulate the grid in chunks and run every predictor on the same stacks."""
    op = op or Optics()
    rng = np.random.default_rng(seed)
    d, p, b = draw_grid(rng, per_cell, DECADES, PHOTONS, BACKGROUND)
    outs: dict[str, list] = {k: [] for k in predictors}
    d_path = []
    for a in range(0, len(d), chunk):
        sl = slice(a, a + chunk)
        bt = simulate(rng, d[sl], p[sl], b[sl], op)
        d_path.append(bt.d_path)
        pk = make_packet(bt.stacks, op, op.baseline, op.adu_per_photon, a // chunk)
        for name, pred in predictors.items():
            outs[name].append(pred.predict(pk))
    merged = {k: {c: np.concatenate([o[c] for o in v]) for c in v[0]} for k, v in outs.items()}
    return Rows(d, p, b, np.concatenate(d_path), merged)


def crb_rel_sd(rows: Rows, op: Optics) -> np.ndarray:
    """sqrt(CRB(D)) / D per stack, for a track of T blurred positions with the Mortensen
    localisation variance of the blurred spot at the stack's true photons and background."""
    lv = E.localisation_var(rows.photons, rows.background, rows.d, op.exposure, op.pixel_nm, op.psf_sigma_nm,
                            op.read_sigma)
    return np.sqrt(E.crb_d(rows.d, lv, op.frame_s, blur_r(op), op.frames)) / rows.d


def table(rows: Rows, op: Optics, main: str = "trees", traj: str = "msd", cve: str = "cve") -> tuple[str, bool, list]:
    """Markdown table and whether every cell meets the issue's targets."""
    crb = crb_rel_sd(rows, op)
    lines = ["| D decade (um^2/s) | photons | n | trees med abs log | trajectory-D | CVE | trees / traj-D "
             "| traj-D bias (median D_hat/D) | CVE bias | CRB sd/D | CRB med abs log | coverage 90% | "
             "median interval (D_hi/D_lo) | pass |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ok_all, cells = True, []
    for lo, hi in DECADES:
        for ph in PHOTONS:
            m = (rows.d >= lo) & (rows.d < hi) & (rows.photons == ph)
            if not m.any():
                continue
            err = {k: np.abs(np.log(np.maximum(rows.out[k]["D"][m], E.D_FLOOR) / rows.d[m])) for k in (main, traj, cve)}
            med = {k: float(np.median(v)) for k, v in err.items()}
            o = rows.out[main]
            cov = float(np.mean((o["D_lo"][m] <= rows.d[m]) & (rows.d[m] <= o["D_hi"][m])))
            width = float(np.median(o["D_hi"][m] / o["D_lo"][m]))
            bias_t = float(np.exp(np.median(np.log(np.maximum(rows.out[traj]["D"][m], E.D_FLOOR) / rows.d[m]))))
            bias_c = float(np.exp(np.median(np.log(np.maximum(rows.out[cve]["D"][m], E.D_FLOOR) / rows.d[m]))))
            c = float(np.median(crb[m]))
            ok = med[main] <= 0.7 * med[traj] and med[main] <= med[cve] and 0.87 <= cov <= 0.93
            ok_all &= ok
            cells.append(dict(lo=lo, hi=hi, photons=ph, n=int(m.sum()), **{f"med_{k}": v for k, v in med.items()},
                              coverage=cov, width=width, bias_traj=bias_t, bias_cve=bias_c, crb=c, ok=ok))
            lines.append(f"| {lo:g}-{hi:g} | {ph:,.0f} | {m.sum()} | {med[main]:.3f} | {med[traj]:.3f} | "
                         f"{med[cve]:.3f} | {med[main] / med[traj]:.2f} | {bias_t:.3f} | {bias_c:.3f} | {c:.2f} | "
                         f"{0.6745 * c:.3f} | {cov:.1%} | {width:.2f} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines), ok_all, cells


def throughput(predictors: dict, n: int = 512, repeat: int = 5, seed: int = 3, op: Optics | None = None) -> dict:
    """Stacks/s of each predictor on one packet of n 16x64x64 stacks (this process, one core)."""
    op = op or Optics()
    rng = np.random.default_rng(seed)
    d = np.exp(rng.uniform(np.log(0.01), np.log(10), n))
    bt = simulate(rng, d, np.full(n, 1000.0), np.full(n, 2.0), op)
    pk = make_packet(bt.stacks, op, op.baseline, op.adu_per_photon)
    rates = {}
    for name, pred in predictors.items():
        pred.predict(pk)  # warm
        best = np.inf
        for _ in range(repeat):
            t0 = time.perf_counter()
            pred.predict(pk)
            best = min(best, time.perf_counter() - t0)
        rates[name] = n / best
    return rates


def tree_rates(bundle_dir, X: np.ndarray, repeat: int = 5) -> dict:
    """Rows/s of the booster alone on feature rows X: compiled vs xgboost, one thread each."""
    from pathlib import Path

    from streamer.core.backends import load_backend

    from .model import load_manifest

    m = load_manifest(bundle_dir)
    path = Path(m["_dir"]) / m["booster"]
    out = {}
    for kind in ("compiled", "xgboost"):
        be = load_backend(path, kind=kind, nthread=1)
        be.predict(X)
        best = np.inf
        for _ in range(repeat):
            t0 = time.perf_counter()
            be.predict(X)
            best = min(best, time.perf_counter() - t0)
        out[kind] = len(X) / best
    return out
