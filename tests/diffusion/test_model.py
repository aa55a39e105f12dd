"""Conformal quantiles, and the shipped trees bundle: accuracy vs CVE, compiled == xgboost, flags."""

import numpy as np
import pytest

from streamer.modalities.diffusion.conformal import conformal_quantile, fit_mondrian
from streamer.modalities.diffusion.evaluate import make_packet
from streamer.modalities.diffusion.model import DEFAULT_BUNDLE, load_manifest
from streamer.modalities.diffusion.physics import Optics, simulate


def test_conformal_quantile_finite_sample():
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(3000):
        s = np.abs(rng.standard_normal(50))
        q = conformal_quantile(s, 0.1)
        hits.append(abs(rng.standard_normal()) <= q)
    # expected coverage ceil(51 * 0.9) / 51 = 90.2 %; sd of the mean over 3,000 draws 0.55 %
    assert 0.89 <= np.mean(hits) <= 0.92
    assert conformal_quantile(np.ones(5), 0.1) == float("inf")  # too few scores for 90 %


def test_mondrian_adapts_to_photons():
    rng = np.random.default_rng(1)
    n = 20000
    photons = np.exp(rng.uniform(np.log(100), np.log(5000), n))
    mu = rng.uniform(-4, 2, n)
    sd = 0.5 * np.sqrt(100 / photons) + 0.05  # noisier at low photons
    y = mu + sd * rng.standard_normal(n)
    m = fit_mondrian(mu, y, photons)
    q = m.half_width(mu, photons)
    assert q[photons < 200].mean() > 2 * q[photons > 2000].mean()
    for sel in (photons < 200, photons > 2000):
        assert 0.88 <= np.mean(np.abs(y - mu)[sel] <= q[sel]) <= 0.93


@pytest.fixture(scope="module")
def batch():
    op = Optics()
    rng = np.random.default_rng(21)
    n = 160
    d = np.exp(rng.uniform(np.log(0.05), np.log(5), n))
    b = simulate(rng, d, np.full(n, 2000.0), np.full(n, 1.5), op)
    return op, b


def test_bundle_is_small_and_consistent():
    m = load_manifest(DEFAULT_BUNDLE)
    size = sum((DEFAULT_BUNDLE / f).stat().st_size for f in m["sha256"])
    assert size < 2_000_000
    assert m["ranges"]["d_um2_s"][0] <= 0.01 and m["ranges"]["d_um2_s"][1] >= 10


def test_trees_beat_cve_and_compiled_matches_xgboost(batch):
    from streamer.modalities.diffusion.predictors import TrackBaseline, TreesPredictor

    op, b = batch
    pk = make_packet(b.stacks, op, op.baseline, op.adu_per_photon)
    comp = TreesPredictor(backend="compiled").predict(pk)
    xgbo = TreesPredictor(backend="xgboost").predict(pk)
    assert np.allclose(np.log(comp["D"]), np.log(xgbo["D"]), atol=1e-4)
    cve = TrackBaseline("cve").predict(pk)
    err_t = np.median(np.abs(np.log(comp["D"] / b.d)))
    err_c = np.median(np.abs(np.log(cve["D"] / b.d)))
    assert err_t < 0.2 and err_t < 0.8 * err_c
    cov = np.mean((comp["D_lo"] <= b.d) & (b.d <= comp["D_hi"]))
    assert 0.8 <= cov <= 0.98
    assert comp["flags"].max() == 0  # in range, bright


def test_flags(batch):
    from streamer.modalities.diffusion.predictors import TreesPredictor

    op, b = batch
    pred = TreesPredictor(backend="compiled")
    pk = make_packet(b.stacks[:8], op, op.baseline, op.adu_per_photon)
    pk.header["frame_s"] = 0.05  # not the frame period the model was trained for
    assert (pred.predict(pk)["flags"] & 1).all()
    rng = np.random.default_rng(3)
    dim = simulate(rng, np.full(8, 0.5), np.full(8, 40.0), np.full(8, 1.0), op)
    out = pred.predict(make_packet(dim.stacks, op, op.baseline, op.adu_per_photon))
    assert (out["flags"] & 2).mean() >= 0.75
