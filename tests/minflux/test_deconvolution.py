"""The per-instrument deconvolution (issue 15): counting, the least-squares map, serving it per instrument."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.modalities.minflux import deconvolution as dc
from streamer.modalities.minflux import deshrink

D = np.asarray(deshrink.D_NODES)
LN = np.asarray(deshrink.LOG1P_N_NODES)


def test_counts_split_by_measured_photons_and_bin_x():
    # a ruler on photon node 3 counts there whole; one halfway between nodes 5 and 6 half in each
    log1p_n = np.array([LN[3], 0.5 * (LN[5] + LN[6]), LN[0] - 1.0, LN[-1] + 1.0])
    x = np.array([10.1, 30.7, -50.0, 200.0])
    d_index = np.array([0, 10, 20, 30])
    c = dc.conditional_counts(x, d_index, log1p_n)
    assert c.shape == (len(LN), len(D), len(dc.X_NODES)) and c.sum() == pytest.approx(4.0)
    xb = lambda v: int((v - dc.X_EDGES[0]) // 0.5)  # noqa: E731
    assert c[3, 0, xb(10.1)] == pytest.approx(1.0)
    assert c[5, 10, xb(30.7)] == pytest.approx(0.5) and c[6, 10, xb(30.7)] == pytest.approx(0.5)
    # outside the nodes: clamped to the end nodes and the end bins
    assert c[0, 20, 0] == pytest.approx(1.0) and c[-1, 30, -1] == pytest.approx(1.0, abs=1e-5)


def _shrunk_counts(scale: float, offset: float, spread: float, n: int = 400, seed: int = 0) -> np.ndarray:
    """Counts (distance nodes, x bins) of x = offset + scale d + N(0, spread)."""
    rng = np.random.default_rng(seed)
    d_index = np.repeat(np.arange(len(D)), n)
    x = offset + scale * D[d_index] + rng.normal(0.0, spread, len(d_index))
    return dc.conditional_counts(x, d_index, np.full(len(x), LN[4]))[4]


def test_solve_inverts_a_shrinking_response():
    # x pulled toward the middle (slope 0.6): T must map x back to d, unbiased on 3-60 nm
    counts = _shrunk_counts(0.6, 14.0, 1.0)
    T = dc.solve(counts, np.full(len(D), 3.0), mu=0.3, lam=1.0)  # bias-dominated: MSE weight 0.3 / 9
    P = counts / counts.sum(axis=1, keepdims=True)
    bias = P @ T - D
    inside = (D >= 5) & (D <= 58)
    assert np.abs(bias[inside]).max() < 0.3
    assert T[np.searchsorted(dc.X_NODES, 14.0 + 0.6 * 40.0)] == pytest.approx(40.0, abs=1.0)


def test_mu_trades_bias_for_mse():
    # wide noise: a large mu pulls T toward the conditional mean (smaller MSE, larger bias)
    counts = _shrunk_counts(1.0, 0.0, 12.0, seed=1)
    P = counts / counts.sum(axis=1, keepdims=True)
    crb = np.full(len(D), 12.0)
    stats = []
    for mu in (0.1, 30.0):
        T = dc.solve(counts, crb, mu, 1.0)
        bias = P @ T - D
        mse = P @ T ** 2 - 2 * D * (P @ T) + D ** 2
        stats.append((np.mean(bias[5:55] ** 2), np.mean(mse[5:55])))
    assert stats[0][0] < stats[1][0] and stats[1][1] < stats[0][1]


def _arrays_with(T: np.ndarray) -> dict:
    shape = (len(deshrink.V0_NODES), len(deshrink.LOG_B_NODES), len(deshrink.HALF_L_NODES), len(LN), len(D))
    return {**deshrink.table_arrays(np.zeros(shape, np.float32)), "deconv": T.astype(np.float16),
            "deconv_x": dc.SERVED_X}


def test_served_map_is_interpolated_between_instrument_nodes():
    shape = (len(deshrink.V0_NODES), len(deshrink.LOG_B_NODES), len(deshrink.HALF_L_NODES), len(LN), len(dc.SERVED_X))
    # T = x + a b-dependent offset (linear in the node index of log b) + 0.01 x photon node
    j = np.arange(shape[1], dtype=np.float32)[None, :, None, None, None]
    k = np.arange(shape[3], dtype=np.float32)[None, None, None, :, None]
    T = np.broadcast_to(dc.SERVED_X[None, None, None, None, :] + 2.0 * j + 0.01 * k, shape).astype(np.float32)
    ds = deshrink.Deshrink(_arrays_with(T), 0.7, deconvolution=True)
    lb = np.asarray(deshrink.LOG_B_NODES)
    b = float(np.exp(0.5 * (lb[3] + lb[4])))  # halfway between b nodes 3 and 4: offset 7
    raw = np.array([20.0, 35.5], np.float32)
    out = ds.apply(raw, np.full(2, LN[2], np.float32), np.full(2, 0.93, np.float32), np.full(2, b, np.float32),
                   np.full(2, 15.0, np.float32))
    assert np.allclose(out, raw + 7.0 + 0.02, atol=0.1)
    # without the flag the stages' table (zero response: the identity) is served
    plain = deshrink.Deshrink(_arrays_with(T), 0.7).apply(raw, np.full(2, LN[2], np.float32),
                                                           np.full(2, 0.93, np.float32), np.full(2, b, np.float32),
                                                           np.full(2, 15.0, np.float32))
    assert np.allclose(plain, raw, atol=0.05)


def test_deconvolution_needs_its_arrays():
    arrays = _arrays_with(np.zeros((1,), np.float32))
    with pytest.raises(ValueError, match="deconv has shape"):
        deshrink.Deshrink(arrays, 0.7, deconvolution=True)
    del arrays["deconv"]
    with pytest.raises(ValueError, match="deconv / deconv_x missing"):
        deshrink.Deshrink(arrays, 0.7, deconvolution=True)


def test_solve_tables_needs_every_node():
    with pytest.raises(ValueError, match="instrument nodes missing"):
        dc.solve_tables({(0, 0, 0): np.zeros((len(LN), len(D), len(dc.X_NODES)), np.float32)}, 3.0, 1.0)


def test_shipped_bundle_serves_the_deconvolution():
    from streamer.modalities.minflux.general import GeneralPredictor

    p = GeneralPredictor("general", backend="xgboost")
    entry = p.manifest["deshrink"]["deconvolution"]
    assert p.deshrink.deconv is not None and entry["rulers_per_cell"] >= 700
    assert p.deshrink.deconv.shape[-1] == len(dc.SERVED_X)
    assert p._deconvolution
