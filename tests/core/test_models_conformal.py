"""Grouped splits and the label-conditional conformal intervals (stored calibration == MAPIE)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, RegressorMixin

from streamer.core import conformal
from streamer.modalities.minflux import datasets
from streamer.core import evaluation


class Shrinking(RegressorMixin, BaseEstimator):
    """A fixed 'model' that shrinks toward 18 nm like a posterior mean: d_hat = 18 + 0.6 (x0 - 18)."""

    n_features_in_ = 2

    def fit(self, X, y):  # pragma: no cover
        return self

    def predict(self, X):
        return 18.0 + 0.6 * (np.asarray(X)[:, 0] - 18.0)


def synthetic(n: int, seed: int):
    """x0 = d + noise whose sd falls with photon count N (sd = 6 * (100 / N)^0.5)."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(6, 30, n)
    photons = rng.uniform(60, 160, n)
    x0 = d + rng.normal(0, 6.0 * np.sqrt(100.0 / photons))
    X = np.column_stack([x0, rng.normal(size=n)]).astype(np.float32)
    return X, d, photons


@pytest.fixture(scope="module")
def calibrated():
    X, y, ph = synthetic(40_000, 1)
    est = Shrinking()
    Xv, yv, phv = synthetic(20_000, 2)
    power = conformal.fit_photon_power(est.predict(Xv) - yv, phv)
    return est, power, conformal.calibrate(est, X, y, ph, power, 0.9, bin_width_nm=2.0)


def test_group_split_is_disjoint_and_complete():
    trace = np.repeat(np.arange(100), 7)
    parts = datasets.group_split(trace, (0.15, 0.2), seed=3)
    assert len(parts) == 3
    total = np.zeros(len(trace), int)
    groups = []
    for m in parts:
        total += m
        groups.append(set(trace[m]))
    assert (total == 1).all()
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert [len(g) for g in groups] == [15, 20, 65]
    again = datasets.group_split(trace, (0.15, 0.2), seed=3)
    assert all((a == b).all() for a, b in zip(parts, again))
    with pytest.raises(ValueError):
        datasets.group_split(trace, (0.6, 0.5), seed=0)


def test_class_balance_weights():
    labels = np.array([15.0] * 10 + [20.0] * 30 + [30.0] * 60)
    w = datasets.class_balance_weights(labels)
    totals = [w[labels == v].sum() for v in (15.0, 20.0, 30.0)]
    np.testing.assert_allclose(totals, totals[0], rtol=1e-5)
    assert w.mean() == pytest.approx(1.0)


def test_label_bins():
    np.testing.assert_allclose(conformal.label_bins(np.array([15.0, 20.0, 30.0, 20.0]), 1.0), [15, 17.5, 25, 30])
    edges = conformal.label_bins(np.random.default_rng(0).uniform(6, 30, 1000), 1.0)
    assert len(edges) == 25 and edges[0] >= 6 and edges[-1] <= 30


def test_photon_power_recovered():
    rng = np.random.default_rng(5)
    photons = rng.uniform(50, 400, 50_000)
    residual = rng.normal(0, 5.0 * (photons / 100.0) ** -0.5)
    assert conformal.fit_photon_power(residual, photons) == pytest.approx(0.5, abs=0.03)
    assert conformal.fit_photon_power(rng.normal(0, 3.0, 50_000), photons) == pytest.approx(0.0, abs=0.03)


def test_stored_calibration_reproduces_mapie(calibrated):
    """Per bin and pooled, the stored quantile is MAPIE's; the numpy hull equals a brute-force
    search over candidate distances using MAPIE's own per-bin intervals."""
    from mapie.regression import SplitConformalRegressor

    est, power, cal = calibrated
    X, y, ph = synthetic(40_000, 1)  # the calibration data again
    Xt, yt, pht = synthetic(300, 7)
    edges = np.asarray(cal["bin_edges_nm"])
    b = conformal.bin_index(y, edges)
    wrapped, X_aug, y_s = conformal.mapie_scaled_problem(est, X, y, conformal.photon_scale(ph, power))
    s_t = conformal.photon_scale(pht, power).astype(np.float64)
    Xt_aug = np.column_stack([Xt, s_t])
    grid = np.linspace(edges[0], edges[-1], 4801)
    inside = np.zeros((len(Xt), len(grid)), bool)
    for k in range(len(edges) - 1):
        scr = SplitConformalRegressor(wrapped, confidence_level=0.9, prefit=True)
        scr.conformalize(X_aug[b == k], y_s[b == k])
        _, iv = scr.predict_interval(Xt_aug)
        lo_k, hi_k = iv[:, 0, 0] / s_t, iv[:, 1, 0] / s_t  # back to nm
        in_bin = (grid >= edges[k]) & (grid <= edges[k + 1])
        inside |= in_bin & (grid >= lo_k[:, None]) & (grid <= hi_k[:, None])
        assert np.allclose(hi_k - lo_k, 2 * cal["q_bins"][k] / s_t)
    lo, hi, empty = conformal.apply_intervals(est.predict(Xt), pht, conformal.IntervalCalibration(cal))
    assert not empty.any() and inside.any(axis=1).all()
    step = grid[1] - grid[0]
    brute_lo = grid[np.argmax(inside, axis=1)]
    brute_hi = grid[len(grid) - 1 - np.argmax(inside[:, ::-1], axis=1)]
    np.testing.assert_allclose(lo, brute_lo, atol=step + 1e-4)
    np.testing.assert_allclose(hi, brute_hi, atol=step + 1e-4)
    # marginal baseline: MAPIE on all calibration tuples
    scr = SplitConformalRegressor(wrapped, confidence_level=0.9, prefit=True).conformalize(X_aug, y_s)
    _, iv = scr.predict_interval(Xt_aug)
    m_lo, m_hi = conformal.apply_marginal(est.predict(Xt), pht, cal)
    np.testing.assert_allclose(m_lo, iv[:, 0, 0] / s_t, atol=1e-4)
    np.testing.assert_allclose(m_hi, iv[:, 1, 0] / s_t, atol=1e-4)


def test_label_conditional_covers_every_class_where_marginal_does_not(calibrated):
    est, _, cal = calibrated
    X, y, ph = synthetic(60_000, 99)  # fresh data
    d = est.predict(X)
    lo, hi, _ = conformal.apply_intervals(d, ph, conformal.IntervalCalibration(cal))
    rep = evaluation.coverage_report(y, lo, hi, ph)
    assert 0.89 <= rep["coverage"] <= 0.92
    assert rep["min_group_coverage"] >= 0.87
    m_lo, m_hi = conformal.apply_marginal(d, ph, cal)
    marginal = evaluation.coverage_report(y, m_lo, m_hi, ph)
    # the shrinking model under-covers the end classes with an ordinary conformal interval
    assert marginal["min_group_coverage"] < 0.85
    # widths adapt to photon count: the brightest decile is narrower than the dimmest
    widths = [r["width_nm"] for r in rep["by_photon_decile"]]
    assert widths[-1] < 0.9 * widths[0]
    assert np.all(np.diff(widths) < 0.05)


def test_calibration_refuses_starved_bins():
    X, y, ph = synthetic(2_000, 3)
    with pytest.raises(ValueError, match="calibration bins"):
        conformal.calibrate(Shrinking(), X, y, ph, 0.5, 0.9, bin_width_nm=1.0)


def test_compiled_hull_is_bit_identical_to_the_numpy_reference(calibrated):
    """The numba kernel (one pass per tuple) and the (n, bins) numpy reference give the same float32
    bounds, including NaN/inf predictions, zero photons and predictions far outside the range; also
    with several cells of padded bin tables (the general model's per-information cells)."""
    _, _, cal = calibrated
    ic = conformal.IntervalCalibration(cal)
    rng = np.random.default_rng(3)
    d = np.concatenate([rng.uniform(-30, 90, 20_000), [np.nan, np.inf, -np.inf, 1e9, -1e9, 0.0]]).astype(np.float32)
    ph = np.concatenate([rng.integers(0, 3000, 20_000), [5, 5, 5, 0, 1e6, np.nan]]).astype(np.float32)
    inv_s = np.float32(1.0) / conformal.photon_scale(ph, ic.power)
    nb = ic.q.shape[1]
    left = np.full((3, nb + 2), np.inf, np.float32)  # 3 cells, the last 2 bins (and more in cell 2) padding
    right = np.full((3, nb + 2), -np.inf, np.float32)
    q = np.zeros((3, nb + 2), np.float32)
    for c, (scale, used) in enumerate(((1.0, nb), (0.5, nb), (2.0, nb - 3))):
        left[c, :used], right[c, :used], q[c, :used] = ic.left[0, :used], ic.right[0, :used], ic.q[0, :used] * scale
    for tables, cell in (((ic.left, ic.right, ic.q), np.zeros(len(d), np.intp)),
                         ((left, right, q), rng.integers(0, 3, len(d)))):
        fast = conformal._hull(d, inv_s, *tables, cell)
        ref = conformal._hull_numpy(d, inv_s, *tables, cell)
        for a, b in zip(fast, ref):
            assert a.dtype == b.dtype == np.float32
            np.testing.assert_array_equal(a, b)
    lo, hi, empty = conformal.apply_intervals(d, ph, ic)
    assert empty[-6:-3].all() and np.isfinite(lo[~np.isnan(d) & ~np.isnan(ph)]).all()


def test_sparse_label_bins_merge_into_their_sparser_neighbour():
    from streamer.core.conformal import bin_index, label_bins, merge_sparse_bins

    rng = np.random.default_rng(5)
    # dense in the middle, thin at both ends of the range (as in an extreme information cell)
    y = np.concatenate([rng.uniform(10, 60, 25000), rng.uniform(2, 10, 150), rng.uniform(60, 68, 300)])
    edges = label_bins(y, 2.0)
    merged = merge_sparse_bins(y, edges, 100)
    counts = np.bincount(bin_index(y, merged), minlength=len(merged) - 1)
    assert counts.min() >= 100
    assert merged[0] == edges[0] and merged[-1] == edges[-1]
    inner = (edges > 12) & (edges < 58)  # the dense bins keep every edge
    assert set(edges[inner]) <= set(merged)
    assert len(merged) < len(edges)
    # a thin stretch inside the range (as at ~50 nm in the highest information cell) merges too
    gap = np.concatenate([y[(y < 30) | (y > 34)], rng.uniform(30, 34, 150)])
    e2 = merge_sparse_bins(gap, edges, 100)
    assert np.bincount(bin_index(gap, e2), minlength=len(e2) - 1).min() >= 100
    # starved throughout: at most a quarter of the bins merge, the rest stay starved (refused)
    thin = rng.uniform(2, 68, 1000)
    e3 = merge_sparse_bins(thin, edges, 100)
    assert len(e3) - 1 >= 3 * (len(edges) - 1) // 4
    assert np.bincount(bin_index(thin, e3), minlength=len(e3) - 1).min() < 100
    # already dense enough: untouched
    assert np.array_equal(merge_sparse_bins(y, edges, 1), edges)
