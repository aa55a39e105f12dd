"""Physics layer: forward model, estimators and Cramer-Rao bound against independent facts."""

import numpy as np
import pytest

from streamer.modalities.minflux import physics
from streamer.modalities.minflux.crb import crb_distance, crb_for_recording
from streamer.modalities.minflux.estimators import ClosedFormEstimator, MLEEstimator
from streamer.modalities.minflux.estimators import poisson_model as pm
from streamer.modalities.minflux.estimators.closed_form import harmonic_fit
from streamer.modalities.minflux.simulate import InstrumentParams, StaticParams, simulate_static
from streamer.modalities.minflux.tuples import TupleBatch


def _geometry(n, d, theta, mid=(1.5, -2.0), amplitude=80.0, b=1.0, v0=1.0):
    centre = np.zeros((n, 2))
    positions = physics.beam_positions(centre)
    sep = np.stack([d * np.cos(theta), d * np.sin(theta)], axis=1)
    m = np.broadcast_to(np.asarray(mid, float), (n, 2))
    a = physics.a_from_v0(np.full(n, v0))
    mu = physics.expected_counts(positions, m - sep / 2, m + sep / 2, np.full(n, amplitude),
                                 np.ones(n), np.ones(n), a, np.full(n, b))
    return positions, mu, m


def test_excitation_extremes_and_visibility():
    a = physics.a_from_v0(0.95)
    assert 2 * a / (1 + a**2) == pytest.approx(0.95)
    assert physics.excitation(np.array(0.0), a) == pytest.approx((1 - a) ** 2, abs=1e-6)
    assert physics.excitation(np.array(physics.LAMBDA_NM / 4), a) == pytest.approx((1 + a) ** 2, abs=1e-5)


@pytest.mark.parametrize("v0", [1.0, 0.93])
def test_noise_free_harmonic_fit_gives_design_visibility(v0):
    d = np.array([6.0, 12.0, 20.0, 30.0])
    theta = np.array([0.3, 0.9, 1.2, 0.1])
    positions, mu, _ = _geometry(4, d, theta, b=1.5, v0=v0)
    m0, m1, _ = harmonic_fit(mu, positions)
    v = m1 / (m0 - 1.5)
    expected = physics.visibility(physics.projected_separation(d, theta), v0)
    np.testing.assert_allclose(v, expected, rtol=1e-5)


def test_closed_form_and_mle_exact_on_noise_free_counts():
    d = np.array([7.0, 15.0, 22.0, 29.0])
    theta = np.array([0.4, 1.0, 0.7, 1.3])
    positions, mu, _ = _geometry(4, d, theta)
    batch = TupleBatch.build(mu, positions)
    np.testing.assert_allclose(ClosedFormEstimator().predict(batch), d, atol=0.02)
    np.testing.assert_allclose(MLEEstimator().predict(batch), d, atol=0.05)


def test_simulated_counts_are_poisson_around_the_model():
    inst = InstrumentParams(background_range=(1.0, 1.0), brightness_ratio_range=(1.0, 1.0), centre_error_nm=0.0)
    rec = simulate_static(1, 200_000, seed=5, instrument=inst, params=StaticParams(photon_cv=1e-6))
    t = rec.truth
    positions, mu, _ = _geometry(1, t["d_nm"][:1], t["theta"][:1], mid=(0.0, 0.0),
                                 amplitude=t["amplitude"][0], b=1.0)
    counts = rec.tuples.counts.astype(float)
    mean, var = counts.mean(axis=0), counts.var(axis=0)
    # independent forward model vs the simulator's draws: mean within 4 standard errors, var = mean
    np.testing.assert_array_less(np.abs(mean - mu[0]), 4 * np.sqrt(mu[0] / len(counts)) + 1e-9)
    np.testing.assert_allclose(var, mean, rtol=0.03)


def test_model_jacobian_matches_finite_differences_of_forward_model():
    rng = np.random.default_rng(0)
    n = 5
    theta = np.column_stack([np.log(rng.uniform(50, 100, n)), rng.uniform(5, 25, (n, 2)), rng.normal(0, 3, (n, 2))])
    positions = physics.beam_positions(np.zeros((n, 2)))
    u = pm.relative_offsets(positions)
    mu, J = pm.model(theta, u, 1.0, 1.0)

    def forward(th):
        sep = th[:, 1:3]
        mid = th[:, 3:5]
        return physics.expected_counts(positions, mid - sep / 2, mid + sep / 2, np.exp(th[:, 0]),
                                       np.ones(n), np.ones(n), np.ones(n), np.ones(n)).reshape(n, 6)

    np.testing.assert_allclose(mu, forward(theta), rtol=1e-5)
    for i in range(pm.N_PARAMS):
        h = 0.02  # the forward model evaluates cos in float32
        step = np.zeros_like(theta)
        step[:, i] = h
        fd = (forward(theta + step) - forward(theta - step)) / (2 * h)
        np.testing.assert_allclose(J[:, :, i], fd, rtol=5e-3, atol=5e-3)


def test_crb_scales_with_inverse_sqrt_photons_without_background():
    d, theta = np.array([15.0]), np.array([0.6])
    positions = physics.beam_positions(np.zeros((1, 2)))
    args = dict(d_nm=d, theta=theta, mid_nm=np.zeros((1, 2)), positions=positions, background=1e-9, v0=1.0)
    low = crb_distance(amplitude=np.array([100.0]), **args)
    high = crb_distance(amplitude=np.array([400.0]), **args)
    assert low / high == pytest.approx(2.0, rel=1e-3)


def test_mle_spread_approaches_crb_at_high_photon_counts():
    inst = InstrumentParams(background_range=(1.0, 1.0), brightness_ratio_range=(1.0, 1.0))
    rec = simulate_static(150, 100, seed=11, instrument=inst, params=StaticParams(photons_range=(1000, 1000)))
    est = MLEEstimator().predict(rec.tuples)
    err = est - rec.truth["d_nm"]
    crb = crb_for_recording(rec.truth, rec.tuples.positions)
    ratio = np.sqrt(np.mean(err**2)) / np.sqrt(np.mean(crb**2))
    assert 0.9 < ratio < 1.12, ratio
    assert abs(err.mean()) < 0.2
    # the closed form ignores the brightness shared by both axes: it cannot beat the MLE
    cf = ClosedFormEstimator().predict(rec.tuples) - rec.truth["d_nm"]
    assert np.sqrt(np.mean(cf**2)) > np.sqrt(np.mean(err**2))
