"""A per-instrument deconvolution of the posterior mean: the map T(x) the general model serves (issue 15).

The de-shrinking stages (:mod:`.deshrink`) invert the *mean* response of the posterior mean x.
Where x spreads widely (few photons; v0 0.93 at 45 nm) inverting a mean leaves a bias,
E[m^-1(x)] != m^-1(E[x]), and iterating it converges slowly: four stages left 5 of the issue
grid's 90 cells biased (3 on the development grid). Here the correction is solved for directly. Per instrument node
(v0, b, L/2) and photon node N, rulers are simulated on the 1-nm distance nodes, P(x | d, N) is
tabulated on 0.5-nm bins of x, and T is the map that minimises

    sum_d w_d [ (E[T(x) | d] - d)^2 / tol_d^2  +  mu E[(T(x) - d)^2 | d] / CRB_d^2 ]  +  lam |T''|^2

with tol_d = max(1 nm, 0.1 CRB_d), the issue's own bias tolerance, and the per-tuple CRB as the
scale of the error (w_d = 1 on 3-60 nm, 0.2 outside): a linear least-squares problem per node,
squared bias in units of the tolerance plus mu x the MSE in units of the floor. Served, T is
interpolated multilinearly between instrument nodes (as the response tables are) and bilinearly in
(photons, x) per tuple: it replaces the folded table of the stages.

Rulers are counted into photon nodes by their *measured* photon count (linear weights in
log1p N), the quantity T is looked up with; their nominal budget is drawn log-uniformly over the
photon nodes' span, so each (photon node, distance node) pair holds ~``rulers_per_cell``.

``mu`` was chosen on the development grid (seed 4242, never the test grid), the number of rulers
with the tenth session's probe there: bench/RESULTS.md, "the per-instrument deconvolution, served".
"""

from __future__ import annotations

import time

import numpy as np

from . import deshrink

#: the bins of the posterior mean x that P(x | d) is tabulated on; T is served on their centres
X_EDGES = np.arange(-10.0, 90.001, 0.5)
X_NODES = 0.5 * (X_EDGES[1:] + X_EDGES[:-1])
#: T is stored on every other node (1 nm apart; T is smooth, its curvature penalised): half the bytes
SERVED_X = X_NODES[::2]
#: weight of each distance node in the objective: the issue's 3-60 nm fully, the trained margin less
_IN_RANGE = (3.0, 60.0)
_OUTSIDE_WEIGHT = 0.2


def instrument_nodes() -> list[tuple[int, int, int]]:
    """(v0, b, L/2) node indices of the response tables' grid (:mod:`.deshrink`), in table order."""
    return [(i, j, k) for i in range(len(deshrink.V0_NODES)) for j in range(len(deshrink.LOG_B_NODES))
            for k in range(len(deshrink.HALF_L_NODES))]


def node_instrument(node: tuple[int, int, int]) -> tuple[float, float, float]:
    """(v0, b, L/2) of a node."""
    i, j, k = node
    return deshrink.V0_NODES[i], float(np.exp(deshrink.LOG_B_NODES[j])), deshrink.HALF_L_NODES[k]


def conditional_counts(x: np.ndarray, d_index: np.ndarray, log1p_n: np.ndarray) -> np.ndarray:
    """(photon nodes, distance nodes, x bins) float32 counts of rulers: each ruler's weight is split
    between its two photon nodes linearly in log1p N (clamped at the ends), as T is served."""
    n_nodes = np.asarray(deshrink.LOG1P_N_NODES)
    K, J, F = len(n_nodes), len(deshrink.D_NODES), len(X_NODES)
    p = np.clip((log1p_n - n_nodes[0]) / (n_nodes[1] - n_nodes[0]), 0.0, K - 1.000001)
    k = p.astype(np.int64)
    w = p - k
    xi = np.clip(((x - X_EDGES[0]) / (X_EDGES[1] - X_EDGES[0])).astype(np.int64), 0, F - 1)
    flat = (k * J + d_index) * F + xi
    size = K * J * F
    counts = np.bincount(flat, 1.0 - w, size) + np.bincount(flat + J * F, w, size)  # k + 1 <= K - 1
    return counts.reshape(K, J, F).astype(np.float32)


def solve(counts: np.ndarray, crb: np.ndarray, mu: float, lam: float) -> np.ndarray:
    """T on :data:`X_NODES`: ``counts`` (distance nodes, x bins) and ``crb`` (distance nodes,) of one
    (instrument, photon) node, or stacked (nodes, distance nodes, x bins) and (nodes, distance
    nodes) for a batch (one batched solve). Distance nodes no ruler reached drop out; a tiny ridge
    toward x keeps bins no distance reaches defined (the curvature term carries T into them smoothly)."""
    counts, crb = np.asarray(counts, np.float64), np.asarray(crb, np.float64)
    single = counts.ndim == 2
    if single:
        counts, crb = counts[None], crb[None]
    d = np.asarray(deshrink.D_NODES)
    total = counts.sum(axis=2)
    P = counts / np.maximum(total, 1.0)[..., None]
    w = np.where((d >= _IN_RANGE[0]) & (d <= _IN_RANGE[1]), 1.0, _OUTSIDE_WEIGHT) * (total > 0)
    tol = np.maximum(1.0, 0.1 * crb)
    a, b = w / tol ** 2, mu * w / crb ** 2
    n_x = len(X_NODES)
    D2 = np.diff(np.eye(n_x), 2, axis=0)
    A = np.einsum("kjx,kj,kjy->kxy", P, a, P, optimize=True)
    A[:, np.arange(n_x), np.arange(n_x)] += np.einsum("kjx,kj->kx", P, b) + 1e-6
    A += lam * D2.T @ D2
    rhs = np.einsum("kjx,kj->kx", P, (a + b) * d) + 1e-6 * X_NODES
    T = np.linalg.solve(A, rhs[..., None])[..., 0]
    return T[0] if single else T


def simulate_counts(raw_of, simulate, space, rulers_per_cell: int, seed: int, nodes=None, log=print) -> dict:
    """Conditional counts of each instrument node in ``nodes`` (default all): ``rulers_per_cell`` x
    (photon nodes) rulers per distance node, one tuple each, drawn with the training space's
    orientation, brightness ratio, photon spread and centre error (``simulate(d, theta, v0, b, g2,
    photons, L/2, 1, rng, photon_cv, centre_error_nm)``, i.e. :func:`.general.simulate_rulers`),
    their posterior mean ``raw_of(rec)`` with the true instrument. Each node draws from its own
    stream (seed, node), so any split of the nodes gives the same counts."""
    n_nodes = np.asarray(deshrink.LOG1P_N_NODES)
    d_nodes = np.asarray(deshrink.D_NODES)
    # nominal budgets half a node beyond the ends, so the end nodes are filled like the rest
    half = 0.5 * (n_nodes[1] - n_nodes[0])
    span = (n_nodes[0] - half, n_nodes[-1] + half)
    per_d = rulers_per_cell * len(n_nodes)
    nodes = instrument_nodes() if nodes is None else list(nodes)
    out, t0 = {}, time.perf_counter()
    for c, node in enumerate(nodes):
        v0, b, hl = node_instrument(node)
        rng = np.random.default_rng([seed, *node])
        d_index = np.repeat(np.arange(len(d_nodes)), per_d)
        n = len(d_index)
        full = lambda v: np.full(n, float(v))  # noqa: E731
        rec = simulate(d_nodes[d_index], rng.uniform(0.0, np.pi, n), full(v0), full(b),
                       rng.uniform(*space.brightness_ratio_range, n), np.expm1(rng.uniform(*span, n)), full(hl), 1,
                       rng, space.photon_cv, space.centre_error_nm)
        x = np.asarray(raw_of(rec), np.float64)
        out[node] = conditional_counts(x, d_index, np.log1p(rec.tuples.photons.astype(np.float64)))
        if (c + 1) % 20 == 0 or c + 1 == len(nodes):
            log(f"[deconvolution] {c + 1} of {len(nodes)} instrument nodes; {time.perf_counter() - t0:.0f} s")
    return out


def solve_tables(counts: dict, mu: float, lam: float) -> np.ndarray:
    """(v0, b, L/2, photon, x) float32 tables T (on :data:`SERVED_X`) from the counts of every instrument node."""
    shape = (len(deshrink.V0_NODES), len(deshrink.LOG_B_NODES), len(deshrink.HALF_L_NODES),
             len(deshrink.LOG1P_N_NODES), len(SERVED_X))
    missing = [node for node in instrument_nodes() if node not in counts]
    if missing:
        raise ValueError(f"deconvolution: counts of {len(missing)} instrument nodes missing (first {missing[0]})")
    tables = np.empty(shape, np.float32)
    ln, d = np.asarray(deshrink.LOG1P_N_NODES), np.asarray(deshrink.D_NODES)
    for node in instrument_nodes():
        crb = deshrink.crb_table(*node_instrument(node), ln, d)  # (photon nodes, distance nodes)
        tables[node] = solve(counts[node], crb, mu, lam)[:, ::2]
    return tables


def manifest_entry(mu: float, lam: float, rulers_per_cell: int, seed: int, seconds: float, counts: str) -> dict:
    """The ``deconvolution`` entry of a bundle manifest's ``deshrink`` entry (``counts``: where the
    conditional counts came from; ``seconds``: this solve's, with the simulation when it ran)."""
    return {"mu": float(mu), "lam": float(lam), "rulers_per_cell": int(rulers_per_cell), "seed": int(seed),
            "x_nodes_nm": [float(SERVED_X[0]), float(SERVED_X[-1]), len(SERVED_X)], "seconds": round(seconds, 1),
            "counts": counts,
            "method": "per instrument and photon node, T(posterior mean) minimising bias^2 / tol^2 + mu MSE / CRB^2 "
                      "+ lam |T''|^2 over the distance nodes (replaces the stages' folded table)"}
