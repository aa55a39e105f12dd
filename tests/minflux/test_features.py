"""Feature extraction: physics correctness, no batch dependence, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.modalities.minflux import physics
from streamer.modalities.minflux.estimators import ClosedFormEstimator
from streamer.modalities.minflux.features import ALL_FEATURES, FEATURE_SETS, compute_features, feature_names
from streamer.modalities.minflux.simulate import simulate_static


@pytest.fixture(scope="module")
def rec():
    return simulate_static(40, 50, seed=11)


def test_shapes_and_sets(rec):
    assert len(FEATURE_SETS["published"]) == 15
    for name, names in FEATURE_SETS.items():
        X = compute_features(rec.tuples.counts, rec.tuples.positions, names)
        assert X.shape == (len(rec), len(names)) and X.dtype == np.float32 and X.flags.c_contiguous
        assert np.isfinite(X).all(), name


def test_published_positions_are_relative_to_centre(rec):
    names = feature_names("published")
    X = compute_features(rec.tuples.counts, rec.tuples.positions, names)
    pos = X[:, [names.index(f"pos_x{e}") for e in "m0p"]]
    np.testing.assert_allclose(pos, np.tile([-1.0, 0.0, 1.0], (len(rec), 1)), atol=1e-4)


def test_no_batch_dependence_and_translation_invariance(rec):
    """A tuple's features depend on that tuple only, never on absolute stage coordinates."""
    c, p = rec.tuples.counts, rec.tuples.positions
    full = compute_features(c, p, ALL_FEATURES)
    singles = np.vstack([compute_features(c[i:i + 1], p[i:i + 1], ALL_FEATURES) for i in (0, 7, 1999)])
    np.testing.assert_array_equal(singles, full[[0, 7, 1999]])
    shifted = compute_features(c, p + np.float32(250.0), ALL_FEATURES)
    np.testing.assert_allclose(shifted, full, atol=2e-3)


def test_closed_form_feature_matches_estimator(rec):
    names = feature_names("physics")
    X = compute_features(rec.tuples.counts, rec.tuples.positions, names)
    cf = ClosedFormEstimator().predict(rec.tuples)
    diff = np.abs(X[:, names.index("dcf")] - cf)
    # float32 vs float64: arccos is steep near visibility 1, elsewhere agreement is ~1e-4 nm
    assert np.median(diff) < 1e-3 and diff.max() < 0.1


def test_visibility_features_on_noise_free_counts():
    """Expected counts of two equal emitters, b = 1: the corrected visibility is cos(2 pi d_a / lambda)."""
    n = 50
    rng = np.random.default_rng(0)
    d, theta = rng.uniform(6, 30, n), rng.uniform(0, np.pi, n)
    centre = rng.uniform(-100, 100, (n, 2))
    mid = centre + rng.normal(0, 3, (n, 2))
    sep = np.stack([d * np.cos(theta), d * np.sin(theta)], 1)
    pos = physics.beam_positions(centre)
    mu = physics.expected_counts(pos, mid - sep / 2, mid + sep / 2, np.full(n, 200.0), np.ones(n), np.ones(n),
                                 np.ones(n), np.ones(n))
    names = ("vis_bc_x", "vis_bc_y", "dcf_x", "dcf_y", "mid_x", "mid_y")
    X = compute_features(mu, pos.astype(np.float32), names)
    np.testing.assert_allclose(X[:, :2], physics.visibility(np.abs(sep), 1.0), atol=2e-5)
    np.testing.assert_allclose(X[:, 2:4], np.abs(sep), atol=0.05)
    np.testing.assert_allclose(X[:, 4:6], mid - centre, atol=1e-3)


def test_clear_errors(rec):
    with pytest.raises(ValueError, match="unknown feature set"):
        feature_names("nope")
    with pytest.raises(ValueError, match="unknown feature names"):
        compute_features(rec.tuples.counts, rec.tuples.positions, ["ratio_xm", "bogus"])
    with pytest.raises(ValueError, match=r"\(n, 2, 3\)"):
        compute_features(rec.tuples.counts.reshape(-1, 6), rec.tuples.positions, ["log_n"])


def test_zero_photon_tuple_is_finite():
    counts = np.zeros((1, 2, 3), np.uint16)
    pos = physics.beam_positions(np.zeros((1, 2))).astype(np.float32)
    assert np.isfinite(compute_features(counts, pos, ALL_FEATURES)).all()


def test_count_sums_equal_numpy_reductions_bit_for_bit():
    """The matrix-product totals are exactly numpy's sums for integer counts (up to the uint16
    maximum) and fall back to numpy's own sums for non-integer counts."""
    from streamer.modalities.minflux.features import count_sums

    rng = np.random.default_rng(0)
    for counts in (rng.poisson(40, (2000, 2, 3)).astype(np.uint16), rng.integers(0, 65536, (2000, 2, 3)).astype(np.uint16),
                   rng.integers(0, 2**20, (500, 2, 3)).astype(np.int64), rng.gamma(2.0, 30.0, (500, 2, 3))):
        c = counts.astype(np.float32)
        n_tot, n_axis = count_sums(counts, c)
        np.testing.assert_array_equal(n_tot, c.sum(axis=(1, 2)))
        np.testing.assert_array_equal(n_axis, c.sum(axis=2))
        assert n_tot.dtype == n_axis.dtype == np.float32


def test_count_totals_and_photons_are_exact():
    from streamer.modalities.minflux.tuples import TupleBatch, count_totals

    rng = np.random.default_rng(1)
    counts = rng.integers(0, 65536, (3000, 2, 3)).astype(np.uint16)
    np.testing.assert_array_equal(count_totals(counts), counts.sum(axis=(1, 2), dtype=np.int64).astype(np.float64))
    pos = np.broadcast_to(np.array([-15.0, 0.0, 15.0], np.float32), (3000, 2, 3))
    b = TupleBatch.build(counts, pos)
    assert b.photons.dtype == np.int64
    np.testing.assert_array_equal(b.photons, counts.sum(axis=(1, 2), dtype=np.int64))
    assert count_totals(counts[:0]).shape == (0,)
