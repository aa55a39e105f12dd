"""Spot finding and localisation on simulated stacks: positions, photons, background."""

import numpy as np
import pytest

from streamer.modalities.diffusion.features import FEATURE_NAMES, features, positions_nm
from streamer.modalities.diffusion.localize import measure
from streamer.modalities.diffusion.physics import Optics, blur_r, simulate


@pytest.fixture(scope="module")
def bright():
    op = Optics()
    rng = np.random.default_rng(5)
    n = 64
    b = simulate(rng, np.full(n, 0.05), np.full(n, 5000.0), np.full(n, 2.0), op)
    return op, b, measure(b.stacks, op.baseline, op.adu_per_photon)


def test_positions_photons_background(bright):
    op, b, sp = bright
    err = np.linalg.norm(positions_nm(sp, op.pixel_nm) - b.positions, axis=-1)
    assert np.median(err) < 8.0  # nm, 5,000 photons (Mortensen sd ~2 nm/axis + pixelation)
    assert np.median(sp.total) == pytest.approx(5000, rel=0.03)
    assert np.median(sp.background) == pytest.approx(2.0, rel=0.05)


def test_blur_widens_measured_spot():
    op = Optics()
    rng = np.random.default_rng(6)
    slow = simulate(rng, np.full(32, 0.01), np.full(32, 3000.0), np.full(32, 1.0), op)
    fast = simulate(rng, np.full(32, 8.0), np.full(32, 3000.0), np.full(32, 1.0), op)
    m = [np.median(measure(b.stacks, op.baseline, op.adu_per_photon).mxx) for b in (slow, fast)]
    assert m[1] > 1.3 * m[0]


def test_feature_matrix(bright):
    op, _, sp = bright
    X = features(sp, op.pixel_nm, op.frame_s, op.exposure, blur_r(op), op.psf_sigma_nm)
    assert X.shape == (64, len(FEATURE_NAMES)) and X.dtype == np.float32 and np.isfinite(X).all()
