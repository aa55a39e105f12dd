"""smlm3d physics: PSF calibration curve, pixel integration, simulator statistics, CRLB scaling, MLE."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.modalities.smlm3d import mle
from streamer.modalities.smlm3d.psf import DEFAULT_PSF, crlb, integrated_1d, model
from streamer.modalities.smlm3d.simulate import Camera, SimConfig, camera_frames, filament_cloud, render, simulate_frames


def test_sigma_curve_astigmatism_and_derivative():
    psf = DEFAULT_PSF
    z = np.linspace(-750, 750, 301)
    sx, sy, dsx, dsy = psf.sigmas(z)
    # x focus at +c, y focus at -c; symmetric at z = 0 only when A = 0, but both equal s0 at their focus
    assert z[np.argmin(sx)] == pytest.approx(psf.c, abs=60)
    assert z[np.argmin(sy)] == pytest.approx(-psf.c, abs=60)
    assert sx.min() == pytest.approx(psf.s0, rel=0.02)
    # ellipticity sx - sy is monotonic over the axial range: z is identifiable
    assert np.all(np.diff(sx - sy) < 0)
    # analytic derivative matches finite differences
    h = 1e-3
    num = (psf.sigmas(z + h)[0] - psf.sigmas(z - h)[0]) / (2 * h)
    np.testing.assert_allclose(dsx, num, rtol=1e-5, atol=1e-9)


def test_pixel_integration_sums_to_one_and_derivatives():
    c, s = np.array([15.3, 12.9]), np.array([1.2, 2.5])
    E, dc, ds = integrated_1d(c, s, 31, derivs=True)
    np.testing.assert_allclose(E.sum(1), 1.0, atol=1e-6)
    h = 1e-5
    np.testing.assert_allclose(dc, (integrated_1d(c + h, s, 31) - integrated_1d(c - h, s, 31)) / (2 * h), atol=1e-7)
    np.testing.assert_allclose(ds, (integrated_1d(c, s + h, 31) - integrated_1d(c, s - h, 31)) / (2 * h), atol=1e-7)


def test_model_jacobian_matches_finite_differences():
    theta = np.array([[6.3, 6.8, -220.0, 3000.0, 40.0], [5.5, 7.1, 510.0, 800.0, 10.0]])
    mu, J = model(theta, 13, DEFAULT_PSF, 100.0, jac=True)
    steps = np.array([1e-4, 1e-4, 1e-2, 1e-2, 1e-3])
    for k in range(5):
        tp, tm = theta.copy(), theta.copy()
        tp[:, k] += steps[k]
        tm[:, k] -= steps[k]
        num = (model(tp, 13, DEFAULT_PSF, 100.0) - model(tm, 13, DEFAULT_PSF, 100.0)) / (2 * steps[k])
        np.testing.assert_allclose(J[..., k], num, rtol=1e-4, atol=1e-5)


def test_crlb_scales_as_inverse_sqrt_photons_without_background():
    th = np.array([[10.5, 10.5, 100.0, 1000.0, 1e-6], [10.5, 10.5, 100.0, 4000.0, 1e-6]])
    sd = crlb(th, n_px=21)
    assert sd[0, 0] / sd[1, 0] == pytest.approx(2.0, rel=0.02)
    assert sd[0, 2] / sd[1, 2] == pytest.approx(2.0, rel=0.02)
    # with background the bound is worse
    assert crlb(np.array([[10.5, 10.5, 100.0, 1000.0, 50.0]]), n_px=21)[0, 0] > sd[0, 0]


def test_simulator_counts_photons_and_camera_noise():
    cfg = SimConfig(n_frames=400, photons=5000, background=50, density=2.0, sampling="csr", seed=3)
    frames, truth = simulate_frames(cfg)
    assert frames.dtype == np.uint16 and frames.shape == (400, 64, 64)
    assert abs(len(truth["x"]) / 400 - 2.0) < 0.25  # Poisson density
    total = (frames.astype(float) - cfg.camera.baseline).sum((1, 2))
    expected = 64 * 64 * 50 + np.bincount(truth["item"], truth["photons"], minlength=400)
    # emitters >= 3 px from the edge: nearly all their photons land on the frame
    assert np.mean(total / expected) == pytest.approx(1.0, abs=0.01)
    # shot noise: variance of a flat background frame = mean (+ read noise)
    cam = Camera(read_noise=0.0)
    flat = camera_frames(np.full((50, 64, 64), 50.0), cam, np.random.default_rng(0)).astype(float) - 100
    assert flat.var() == pytest.approx(50.0, rel=0.05)
    em = camera_frames(np.full((50, 64, 64), 50.0), Camera(read_noise=0.0, emccd=True), np.random.default_rng(0))
    assert (em.astype(float) - 100).var() == pytest.approx(100.0, rel=0.08)  # excess noise factor 2


def test_render_matches_single_emitter_model():
    t = {"item": np.array([0]), "x": np.array([3150.0]), "y": np.array([2980.0]), "z": np.array([300.0]),
         "photons": np.array([2000.0])}
    img = render(t, 1, 64, 64, 100.0, 5.0)
    roi = img[0, 23:36, 25:38]
    mu = model(np.array([[31.5 - 25, 29.8 - 23, 300.0, 2000.0, 5.0]]), 13, DEFAULT_PSF, 100.0)[0]
    np.testing.assert_allclose(roi, mu, rtol=1e-9)


def test_filaments_are_line_like_and_inside():
    rng = np.random.default_rng(0)
    cloud = filament_cloud(rng, (6400.0, 6400.0), 1, margin_nm=300.0)
    assert len(cloud) > 1000
    assert cloud[:, :2].min() >= 300 and cloud[:, :2].max() <= 6100
    assert np.abs(cloud[:, 2]).max() <= 750
    # a filament is one-dimensional: most points have a neighbour within 30 nm laterally
    from scipy.spatial import cKDTree
    d, _ = cKDTree(cloud[:, :2]).query(cloud[:, :2], k=2)
    assert np.median(d[:, 1]) < 30


def test_mle_unbiased_and_efficient_on_isolated_emitters():
    rng = np.random.default_rng(1)
    M = 400
    truth = np.column_stack([6.5 + rng.uniform(-0.5, 0.5, M), 6.5 + rng.uniform(-0.5, 0.5, M),
                             rng.uniform(-600, 600, M), np.full(M, 3000.0), np.full(M, 20.0)])
    mu = model(truth, 13, DEFAULT_PSF, 100.0)
    rois = rng.poisson(mu).astype(float)
    f = mle.fit(rois, DEFAULT_PSF, 100.0, n_iter=30)
    err = f.theta - truth
    sd = crlb(truth, n_px=13) / np.array([100, 100, 1, 1, 1])  # x, y back in pixels
    z = err[:, :3] / sd[:, :3]
    assert np.all(np.abs(z.mean(0)) < 0.2)           # unbiased (mean error < 0.2 CRLB)
    assert np.all(z.std(0) < 1.2) and np.all(z.std(0) > 0.8)  # efficient: spread ~ CRLB
    assert f.converged.mean() > 0.95
