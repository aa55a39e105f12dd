"""The de-shrinking map makes a shrunken (posterior-mean-like) output unbiased per distance."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.modalities.minflux import debias


def shrunk(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.uniform(6, 30, n)
    # a saturating response, like a posterior mean under a bounded prior, plus noise
    d_hat = 18.0 + 7.0 * np.tanh((y - 18.0) / 10.0) + rng.normal(0, 2.0, n)
    return d_hat.astype(np.float32), y


def class_bias(est, y):
    edges = np.arange(6, 31, 4)
    idx = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, len(edges) - 2)
    return np.array([np.mean(est[idx == k] - y[idx == k]) for k in range(len(edges) - 1)])


def test_debias_removes_per_class_bias():
    d_hat, y = shrunk(200_000, 1)
    params = debias.fit(d_hat, y, np.linspace(6, 30, 25))
    d_new, y_new = shrunk(200_000, 2)
    raw_bias = class_bias(d_new, y_new)
    fixed = debias.apply(d_new, params)
    assert fixed.dtype == np.float32
    assert np.abs(raw_bias).max() > 2.0
    assert np.abs(class_bias(fixed, y_new)).max() < 0.25
    # monotone: the ordering of tuples is kept
    grid = np.linspace(0, 40, 1001).astype(np.float32)
    assert np.all(np.diff(debias.apply(grid, params)) >= 0)
    assert debias.apply(grid, params).min() >= 0.0


def test_identity_and_discrete_distances():
    x = np.array([10.0, 20.0], np.float32)
    assert debias.apply(x, None) is x
    rng = np.random.default_rng(3)
    y = rng.choice([15.0, 20.0, 30.0], 30_000)
    d_hat = 20.0 + 0.6 * (y - 20.0) + rng.normal(0, 2.0, len(y))
    params = debias.fit(d_hat, y, np.array([15.0, 17.5, 25.0, 30.0]))
    d_new = 20.0 + 0.6 * (y - 20.0) + rng.normal(0, 2.0, len(y))
    out = debias.apply(d_new, params)
    for v in (15.0, 20.0, 30.0):
        assert np.mean(out[y == v]) == pytest.approx(v, abs=0.1)
    with pytest.raises(ValueError, match="two or more"):
        debias.fit(d_hat[y == 15.0], y[y == 15.0], np.array([15.0, 17.5, 25.0, 30.0]))


def test_photon_dependent_map():
    """Shrinkage that weakens with photon count: one map per photon bin keeps every (d, N) unbiased."""
    rng = np.random.default_rng(4)
    n = 300_000

    def draw():
        y = rng.uniform(6, 30, n)
        photons = rng.uniform(100, 400, n)
        k = photons / (photons + 150.0)  # fraction of the deviation from 18 nm that survives
        return (18.0 + k * (y - 18.0) + rng.normal(0, 1.5, n)).astype(np.float32), y, photons

    d_hat, y, ph = draw()
    edges = np.linspace(6, 30, 25)
    params = debias.fit_by_photons(d_hat, y, ph, edges, n_photon_bins=5)
    d_new, y_new, ph_new = draw()
    out = debias.apply(d_new, params, ph_new)
    single = debias.apply(d_new, debias.fit(d_hat, y, edges))
    for sel in (ph_new < 150, ph_new > 350):
        assert np.abs(class_bias(out[sel], y_new[sel])).max() < 0.4
        assert np.abs(class_bias(single[sel], y_new[sel])).max() > 1.0  # one map for all N is not enough
    with pytest.raises(ValueError, match="photon"):
        debias.apply(d_new, params)
