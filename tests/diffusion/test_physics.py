"""Simulator statistics: PSF normalisation, Brownian increments, blur coefficient R, camera noise."""

import numpy as np
import pytest

from streamer.modalities.diffusion.physics import (Optics, blur_r, brownian_paths, camera, expected_images,
                                                   path_msd_d, pixel_profiles, simulate, sub_times)


def test_pixel_profiles_integrate_to_one_and_centre():
    p = pixel_profiles(np.array([3200.0, 3300.0]), 64, 200.0, 106.0)
    assert np.allclose(p.sum(-1), 1.0, atol=1e-9)
    centre = (p[0] * (np.arange(64) + 0.5) * 200).sum()
    assert centre == pytest.approx(3200.0, abs=1e-6)


def test_expected_image_total_photons():
    op = Optics(frames=3, height=32, width=32)
    paths = np.full((2, 3, op.sub, 2), 16 * 200.0)
    mu = expected_images(paths, np.array([1000.0, 50.0]), np.array([2.0, 0.0]), op)
    assert mu.shape == (2, 3, 32, 32)
    assert mu[0].sum(axis=(1, 2)) == pytest.approx(1000 + 2 * 32 * 32, rel=1e-4)
    assert mu[1].sum(axis=(1, 2)) == pytest.approx(50, rel=1e-4)


def test_brownian_increments_have_variance_2_d_dt():
    op = Optics()
    rng = np.random.default_rng(0)
    d = np.full(4000, 0.5)
    p = brownian_paths(rng, d, op)
    dt = op.exposure / op.sub
    inc = np.diff(p.reshape(len(d), -1, 2), axis=1)[:, :op.sub - 1]  # within-frame steps
    assert inc.var() == pytest.approx(2 * 0.5e6 * dt, rel=0.02)
    assert np.median(path_msd_d(p, op)) == pytest.approx(0.5, rel=0.03)


def test_blur_coefficient():
    assert blur_r(Optics(sub=2000)) == pytest.approx(1 / 6, rel=1e-3)  # continuous exposure
    assert blur_r(Optics(sub=10)) == pytest.approx(1 / 6 - 1 / 600, rel=1e-6)  # discrete sub-positions
    assert blur_r(Optics(sub=2000, exposure_s=0.005)) == pytest.approx(1 / 12, rel=1e-3)  # R = t_E / (6 dt)
    t = sub_times(Optics(exposure_s=0.004))
    assert t.shape == (16, 10) and t[1, 0] - t[0, 0] == pytest.approx(0.01)


def test_camera_mean_and_variance():
    op = Optics(baseline=100.0, adu_per_photon=2.0, read_sigma=1.5)
    rng = np.random.default_rng(1)
    mu = np.full((1, 1, 200, 200), 20.0, np.float32)
    adu = camera(rng, mu, op).astype(float)
    assert adu.mean() == pytest.approx(100 + 2 * 20, rel=0.003)
    assert adu.var() == pytest.approx(4 * (20 + 1.5 ** 2), rel=0.05)


def test_simulate_truth_and_dtype():
    rng = np.random.default_rng(2)
    op = Optics(height=32, width=32)
    b = simulate(rng, np.array([0.1, 5.0]), np.array([1000.0, 1000.0]), np.array([1.0, 1.0]), op)
    assert b.stacks.dtype == np.uint16 and b.stacks.shape == (2, 16, 32, 32)
    assert b.positions.shape == (2, 16, 2)
    # fast molecules spread their light more: lower peak pixel
    assert b.stacks[1].max() < b.stacks[0].max()
