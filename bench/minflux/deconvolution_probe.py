"""Probe (issue 15): per-instrument deconvolution of the posterior mean against the shipped de-shrinking.

    .venv/bin/python bench/minflux/deconvolution_probe.py --v0 0.93 --background 2 --photons 800

The shipped de-shrinking inverts the *mean* response of the posterior mean x (four iterated
stages). Where x spreads widely the inverse's curvature leaves a bias (E[m^-1(x)] != m^-1(E[x])).
This probe solves for the correction directly: for one instrument and photon budget it simulates
rulers on the 1-nm distance nodes 2-68 nm, tabulates P(x | d) on 0.5-nm bins of x, and picks the
map T(x) minimising

    sum_d w_d (E[T(x) | d] - d)^2  +  mu sum_d w_d E[(T(x) - d)^2 | d]  +  lam |T''|^2

(w_d = 1 on 3-60 nm, 0.2 outside), a linear least-squares problem: the squared bias plus mu times
the mean squared error. It then scores T and the bundle's served distance on fresh rulers. The
served form (``streamer/modalities/minflux/deconvolution.py``, since the eleventh session) solves T
per instrument and photon node with the issue's scales (bias / tolerance, error / CRB) and
interpolates it between nodes; this probe stays a per-instrument diagnostic ("shipped" below is
whatever the bundle serves: since then that served T).
Prints one row per (lam, mu) and distance: bias / RMSE of T against the bundle's served distance.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from streamer.modalities.minflux import deconvolution, deshrink  # noqa: E402

D_NODES = np.asarray(deshrink.D_NODES)
X_EDGES = deconvolution.X_EDGES


def simulate(gp, d_values, rulers: int, v0: float, background: float, photons: float, half_l: float, seed: int):
    """(true d, posterior mean, shipped de-shrunk distance) of ``rulers`` one-tuple rulers per distance."""
    from streamer.modalities.minflux.offgrid import simulate_rulers_as_graded

    d = np.repeat(np.asarray(d_values, float), rulers)
    rec = simulate_rulers_as_graded(d, v0, background, photons, half_l, 1, np.random.default_rng(seed), {})
    return d, gp.raw_distance(rec.tuples, v0, background), gp.predict_with(rec.tuples, v0, background).distance


def conditional_table(d, x) -> np.ndarray:
    """(distance nodes, x bins) P(x | d), rows summing to 1."""
    xi = np.clip(np.searchsorted(X_EDGES, x) - 1, 0, len(X_EDGES) - 2)
    di = np.round(d - D_NODES[0]).astype(int)
    P = np.zeros((len(D_NODES), len(X_EDGES) - 1))
    np.add.at(P, (di, xi), 1.0)
    return P / np.maximum(P.sum(1, keepdims=True), 1.0)


def solve(P: np.ndarray, mu: float, lam: float) -> np.ndarray:
    """T on the x bins: squared bias + mu x MSE + lam x curvature, least squares. The served solver
    (:func:`deconvolution.solve`) with a CRB of 1 nm at every node: its tolerance max(1 nm, 0.1 CRB)
    is then 1 nm and its error scale 1, so its objective is this unscaled one."""
    return deconvolution.solve(P, np.ones(len(D_NODES)), mu, lam)


def main(argv=None) -> int:
    from streamer.modalities.minflux.general import GeneralPredictor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--v0", type=float, default=0.93)
    p.add_argument("--background", type=float, default=2.0)
    p.add_argument("--photons", type=float, default=800.0)
    p.add_argument("--half-l", type=float, default=15.0)
    p.add_argument("--rulers", type=int, default=3000, help="per distance node for P(x | d)")
    p.add_argument("--test-rulers", type=int, default=4000, help="per scored distance")
    p.add_argument("--mu", type=float, nargs="+", default=[0.05, 0.2])
    p.add_argument("--lam", type=float, nargs="+", default=[1.0])
    args = p.parse_args(argv)
    gp = GeneralPredictor("general")
    t0 = time.time()
    d, x, _ = simulate(gp, D_NODES, args.rulers, args.v0, args.background, args.photons, args.half_l, 1)
    P = conditional_table(d, x)
    scored = (5.0, 10.0, 17.5, 25.0, 35.0, 45.0, 55.0)
    dt, xt, shipped = simulate(gp, scored, args.test_rulers, args.v0, args.background, args.photons, args.half_l, 2)
    print(f"v0 {args.v0:g}, b {args.background:g}, {args.photons:g} photons, L/2 {args.half_l:g} nm; "
          f"P(x | d) from {len(d):,} rulers, scored on {len(dt):,} ({time.time() - t0:.0f} s). "
          f"Per distance: bias / RMSE (nm) of T, then of the shipped de-shrinking")
    xc = deconvolution.X_NODES
    for lam in args.lam:
        for mu in args.mu:
            est = np.interp(xt, xc, solve(P, mu, lam))
            cells = []
            for v in scored:
                s = dt == v
                cells.append(f"{v:g}: {est[s].mean() - v:+.2f} / {np.sqrt(np.mean((est[s] - v) ** 2)):.1f} vs "
                             f"{shipped[s].mean() - v:+.2f} / {np.sqrt(np.mean((shipped[s] - v) ** 2)):.1f}")
            print(f"lam {lam:g}, mu {mu:g}: " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
