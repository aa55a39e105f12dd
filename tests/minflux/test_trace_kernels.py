"""The compiled per-packet steps of the live trace analysis agree with their numpy references."""

import numpy as np
import pytest

from streamer.modalities.minflux import trace_kernels as tk
from streamer.modalities.minflux import traces
from streamer.modalities.minflux.simulate import STATE_BACKGROUND, STATE_ONE, STATE_TWO

pytestmark = pytest.mark.skipif(not tk.HAVE_NUMBA, reason="the kernels are the numpy references without numba")


def _block(rng, k, m, level):
    """A segmenter block: k tail rows then m new ones (P, Q, var, counts) with modulated stretches."""
    n = k + m
    a = np.empty((n, 7))
    on = (np.arange(n) // 97) % 3 != 2
    a[:, 0:2] = rng.normal(np.where(on, 20.0, 0.0)[:, None], 6.0, (n, 2))
    a[:, 2:4] = rng.normal(0.0, 4.0, (n, 2))
    a[:, 4:6] = rng.uniform(20.0, 60.0, (n, 2))
    a[:, 6] = rng.poisson(np.where(on, level, 12.0))
    return a


@pytest.mark.parametrize("k, seen, background", [(0, False, 2.0), (39, True, 2.0), (39, False, 0.1), (5, True, 8.0)])
def test_window_stats_match_numpy(k, seen, background):
    rng = np.random.default_rng(k + int(10 * background))
    a = _block(rng, k, 1000, 150.0)
    h1, h2 = np.zeros(402, np.int64), np.arange(402, dtype=np.int64)
    h2_copy = h2.copy()
    args = (a, k, 40, background, 12.0, 24.0, seen, 4.0, traces._LEVEL_EDGES)
    m1, l1 = tk._window_stats(*args, h1)
    m2, l2 = tk._window_stats_numpy(*args, h2)
    assert np.array_equal(m1, m2) and np.array_equal(l1, l2)
    assert m1.any() and not m1.all()
    assert np.array_equal(h1, h2 - h2_copy)  # the same windows counted, added to what was there


def test_confirmed_states_match_numpy():
    rng = np.random.default_rng(3)
    runs = rng.integers(1, 120, 60)
    states = np.repeat(rng.choice([STATE_BACKGROUND, STATE_ONE, STATE_TWO], len(runs)), runs).astype(np.uint8)
    n, w = len(states), 40
    for start in (0, 17, 300):
        a = tk._confirmed_states(states, start, n - w, w, 255)
        b = tk._confirmed_states_numpy(states, start, n - w, w, 255)
        assert np.array_equal(a, b) and (a != 255).any() and (a == 255).any()


def test_rows_where_match_sum_rows():
    rng = np.random.default_rng(4)
    terms = rng.normal(10.0, 5.0, (500, 6, 2)).astype(np.float32)
    states = rng.choice([STATE_BACKGROUND, STATE_ONE, STATE_TWO], 500).astype(np.uint8)
    for s in (STATE_ONE, STATE_TWO, 77):
        got = tk.rows_where(terms, states, s)
        assert got.dtype == np.float64 and np.array_equal(got, traces.sum_rows(terms[states == s]))
    assert tk.rows_where(terms, states, 77).shape == (0, 2, 6)


@pytest.mark.parametrize("k", [0, 2, 4, 9, 31])
def test_pooled_estimate_matches_numpy(k, monkeypatch):
    """The compiled per-trace estimate against the numpy steps (the kernel switched off)."""
    rng = np.random.default_rng(k)
    per = traces.sum_rows(np.stack([rng.normal(60.0, 9.0, (200 * k + 57, 2)), rng.normal(0, 3, (200 * k + 57, 2)),
                                    rng.normal(95.0, 12.0, (200 * k + 57, 2)), np.full((200 * k + 57, 2), 90.0),
                                    np.full((200 * k + 57, 2), 80.0), np.full((200 * k + 57, 2), 9.0)], axis=1))
    blocks = per[:200 * k].reshape(k, 200, 2, 6).sum(axis=1)
    extra = per[200 * k:].sum(axis=0)
    cases = [(0.93, 2.0, 0.0, 0.0, 0.0), (1.0, 0.5, 0.002, 0.05, 0.0), (0.86, 6.0, 0.004, 0.2, 0.8)]
    for v0, b, v0_se, b_se, sys_nm in cases:
        args = (blocks, np.full(k, 200.0), extra, 57.0, v0, b, v0_se, b_se, 4, sys_nm)
        fast = traces.estimate_from_blocks(*args)
        with monkeypatch.context() as m:
            m.setattr(traces, "pooled_estimate", lambda *a: None)
            ref = traces.estimate_from_blocks(*args)
        assert np.allclose(fast, ref, rtol=1e-12, atol=1e-12, equal_nan=True), (fast, ref)
        assert np.isfinite(fast[0]) and np.isfinite(fast[1]) == (k >= 4)
    # legacy (k, 2, 4) blocks and non-finite v0 columns take the numpy path
    assert tk.pooled_estimate(blocks[..., :4], np.full(k, 200.0), extra[:, :4], 57.0, 0.9, 2.0, 0, 0, 4, 0.0,
                              traces._t95_table(), traces._GH_X, traces._GH_W) is None
    bad = extra.copy()
    bad[0, 4] = np.nan
    assert tk.pooled_estimate(blocks, np.full(k, 200.0), bad, 57.0, 0.9, 2.0, 0, 0, 4, 0.0,
                              traces._t95_table(), traces._GH_X, traces._GH_W) is None


def test_one_sums_match_numpy_and_feed_calibration_and_partials_alike():
    """One summation of the 1-on tuples serves the calibration and the packet's partial-sum row."""
    rng = np.random.default_rng(6)
    terms = rng.normal(10.0, 5.0, (700, 6, 2)).astype(np.float32)
    states = rng.choice([STATE_BACKGROUND, STATE_ONE, STATE_TWO], 700).astype(np.uint8)
    row, n, xx, yy, xy = tk.one_sums(terms, states, STATE_ONE, 1.7)
    r_row, r_n, r_xx, r_yy, r_xy = tk._one_sums_numpy(terms, states, STATE_ONE, 1.7)
    assert n == r_n == (states == STATE_ONE).sum() and np.array_equal(row, r_row)  # summed in the same order
    assert np.allclose([xx, yy, xy], [r_xx, r_yy, r_xy], rtol=1e-12)
    assert np.array_equal(row, traces.sum_rows(terms[states == STATE_ONE]).sum(axis=0))
    assert tk.one_sums(terms, states, 77, 1.0)[1] == 0
    # add_terms (one call) and add_background + add_one (the live path) leave the same state
    a, b = traces.StreamCalibration(), traces.StreamCalibration()
    counts = rng.poisson(12.0, 700).astype(float)
    a.add_terms(counts, states, terms, trace=3)
    b.add_background(counts, states, trace=3)
    b.add_one(*tk.one_sums(terms, states, STATE_ONE, b.background), trace=3)
    assert a.p_sum == b.p_sum and a.one_n == b.one_n == 2 * n and a.xx == b.xx and a.bg_n == b.bg_n
    assert np.array_equal(a.trace_one[3], b.trace_one[3])


def test_harmonic_block_matches_the_stacked_terms():
    """The live path's per-tuple terms in one pass: the same float32 values as the stacked reference."""
    from streamer.modalities.minflux import offgrid

    rec = offgrid.simulate_stream(0.95, 3.0, 1000, seed=9, distances=(8.0, 40.0))
    t = rec.tuples
    ref = np.stack(traces.harmonic_terms(t.counts, t.positions, with_var_q=True), axis=1)
    got = tk.harmonic_block(t.counts, t.positions)
    assert got.dtype == np.float32 and np.array_equal(got, ref)
    odd = t.positions.copy()
    odd[:, :, 0] -= 2.0  # an asymmetric pattern: any 3 distinct positions
    assert np.array_equal(tk.harmonic_block(t.counts, odd),
                          np.stack(traces.harmonic_terms(t.counts, odd, with_var_q=True), axis=1))
