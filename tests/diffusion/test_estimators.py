"""Track estimators on synthetic blurred + noisy tracks: CVE unbiased, its variance formula, CRB."""

import numpy as np
import pytest

from streamer.modalities.diffusion import estimators as E
from streamer.modalities.diffusion.physics import Optics, blur_r, brownian_paths


def _tracks(d, sigma_nm, n=6000, seed=0, op=Optics()):
    rng = np.random.default_rng(seed)
    p = brownian_paths(rng, np.full(n, d), op).mean(axis=2)  # blur-averaged positions
    return p + rng.normal(0, sigma_nm, p.shape)


@pytest.mark.parametrize("d,sigma", [(0.05, 20.0), (1.0, 30.0), (5.0, 60.0)])
def test_cve_unbiased_and_sigma(d, sigma):
    op = Optics()
    pos = _tracks(d, sigma, op=op)
    r = blur_r(op)
    dh, s2 = E.cve(pos, op.frame_s, r)
    assert dh.mean() == pytest.approx(d, rel=0.04)
    assert s2.mean() == pytest.approx(sigma ** 2, rel=0.1, abs=20)
    # Vestergaard's variance formula matches the spread of the estimates
    v = E.cve_var(np.array([d]), np.array([sigma ** 2]), op.frame_s, r, 15)[0]
    assert dh.var() == pytest.approx(v, rel=0.15)


def test_naive_msd_without_offset_is_biased_low_by_blur():
    """MSD(1)/(4 dt) of noise-free blurred positions = D (1 - 2R): the blur bias the seed describes."""
    op = Optics()
    pos = _tracks(1.0, 0.0, op=op)
    naive = E.msd_curve(pos, 1)[:, 0] / (4 * op.frame_s) / E.UM2
    assert naive.mean() == pytest.approx(1 - 2 * blur_r(op), rel=0.03)
    # the line fit with offset (trajectory-D) is not biased by blur on average
    assert E.msd_d(pos, op.frame_s).mean() == pytest.approx(1.0, rel=0.05)


def test_crb_below_cve_and_scaling():
    op = Optics()
    r = blur_r(op)
    d = np.array([0.1, 1.0, 10.0])
    crb = E.crb_d(d, np.zeros(3) + 1e-6, op.frame_s, r, 16)
    # without localisation noise the relative bound does not depend on D
    assert np.allclose(np.sqrt(crb) / d, np.sqrt(crb[0]) / d[0], rtol=1e-4)
    # more frames -> smaller bound ~ 1/N
    crb64 = E.crb_d(d[:1], np.array([1e-6]), op.frame_s, r, 64)
    assert crb64[0] < crb[0] / 3
    # the CVE cannot beat the bound (empirical variance on synthetic tracks)
    pos = _tracks(0.3, 25.0, op=op)
    dh, _ = E.cve(pos, op.frame_s, r)
    bound = E.crb_d(np.array([0.3]), np.array([625.0]), op.frame_s, r, 16)[0]
    assert dh.var() >= 0.95 * bound
    assert dh.var() <= 1.6 * bound  # ... and is close to it (Vestergaard: near-optimal)


def test_localisation_var_scales_with_photons():
    v1 = E.localisation_var(100.0, 0.0, 0.0, 0.01, 200, 106)
    v2 = E.localisation_var(1000.0, 0.0, 0.0, 0.01, 200, 106)
    assert v1 / v2 == pytest.approx(10, rel=0.01)
    assert E.localisation_var(1000.0, 0.0, 10.0, 0.01, 200, 106) > 3 * v2  # blur widens the spot
