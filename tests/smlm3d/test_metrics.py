"""SMLM Challenge metrics: matching tolerances, one-to-one pairing, JI / RMSE / efficiency."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.modalities.smlm3d.metrics import assess, efficiency, match


def test_matching_respects_tolerances_and_frames():
    true_item = np.array([0, 0, 1])
    true_xyz = np.array([[1000.0, 1000, 0], [3000, 3000, 0], [1000, 1000, 0]])
    est_item = np.array([0, 0, 0, 2])
    est_xyz = np.array([[1100.0, 1000, 100],   # 100 nm lateral, 100 axial: match
                        [3000, 3260, 0],       # 260 nm lateral: no
                        [3000, 3000, 600],     # 600 nm axial: no
                        [1000, 1000, 0]])      # frame 2 has no truth
    ie, it = match(est_item, est_xyz, true_item, true_xyz)
    assert list(zip(ie, it)) == [(0, 0)]


def test_matching_is_one_to_one_and_minimises_distance():
    true_xyz = np.array([[0.0, 0, 0], [150, 0, 0]])
    est_xyz = np.array([[140.0, 0, 0], [10, 0, 0]])
    ie, it = match(np.zeros(2, int), est_xyz, np.zeros(2, int), true_xyz)
    pairs = dict(zip(it.tolist(), ie.tolist()))
    assert pairs == {0: 1, 1: 0}  # greedy nearest would pair est 0 with truth 1 either way; total 20 nm


def test_assess_numbers():
    true_item = np.zeros(4, int)
    true_xyz = np.array([[0.0, 0, 0], [1000, 0, 0], [2000, 0, 0], [3000, 0, 0]])
    est_xyz = np.array([[3.0, 4, 10], [1000, 0, -10], [5000, 5000, 0]])  # 2 TP, 1 FP, 2 FN
    a = assess(np.zeros(3, int), est_xyz, true_item, true_xyz)
    assert (a["tp"], a["fp"], a["fn"]) == (2, 1, 2)
    assert a["ji"] == pytest.approx(100 * 2 / 5)
    assert a["rmse_lat"] == pytest.approx(np.sqrt(25 / 2))
    assert a["rmse_ax"] == pytest.approx(10.0)
    assert a["eff_lat"] == pytest.approx(100 - np.sqrt(60 ** 2 + 12.5))
    assert a["eff_3d"] == pytest.approx(0.5 * (efficiency(40, np.sqrt(12.5), 1) + efficiency(40, 10, 0.5)))
    assert efficiency(100, 0, 1) == 100


def test_evaluation_draw_seed_gives_another_draw_of_test_frames():
    """`streamer evaluate --modality smlm3d --draw-seed N`: other frames (other structures) than the
    tables' draw; the same seed, the same frames and rows."""
    from streamer.modalities.smlm3d.evaluate import TEST_SEED, cell_data, run
    from streamer.modalities.smlm3d.predictors import MLEPredictor

    a, ta = cell_data("5k/50", 1.0, 40, seed=TEST_SEED)
    b, tb = cell_data("5k/50", 1.0, 40, seed=40000)
    assert a.shape == b.shape and not np.array_equal(a, b) and not np.array_equal(ta["x"], tb["x"])
    kw = dict(snrs=("5k/50",), densities=(1.0,), min_emitters=40, verbose=False)
    r1, r2 = run({"mle": MLEPredictor()}, seed=40000, **kw), run({"mle": MLEPredictor()}, seed=40000, **kw)
    r0 = run({"mle": MLEPredictor()}, **kw)
    assert r1[0]["ji"] == r2[0]["ji"] and r1[0]["rmse_lat"] == r2[0]["rmse_lat"]
    assert (r0[0]["emitters"], r0[0]["rmse_lat"]) != (r1[0]["emitters"], r1[0]["rmse_lat"])
