"""The numba hot path (:mod:`streamer.modalities.electron.fast`) against the numpy reference code,
the margin form of the candidate classifier, and chunked frame simulation."""

import numpy as np
import pytest

from streamer.modalities.electron import fast
from streamer.modalities.electron import simulate as sim
from streamer.modalities.electron.detect import SEED_RULE, DetectParams, _gather, candidate_features, candidates, detect
from streamer.modalities.electron.features import edge_distances, features

pytestmark = pytest.mark.skipif(not fast.HAVE_NUMBA, reason="numba not installed")


@pytest.fixture()
def numpy_only(monkeypatch):
    def run(fn, *a, **k):
        with monkeypatch.context() as m:
            m.setattr(fast, "HAVE_NUMBA", False)
            return fn(*a, **k)
    return run


@pytest.fixture(scope="module")
def dense(lib):
    return sim.simulate_frames(lib, 2, 160, 160, rate=230.0, seed=3)  # ~2,900 e- per 576x576 frame's density


def _keep(X):  # any deterministic candidate score (the real classifier needs the bundle)
    return 1.0 / (1.0 + np.exp(-(X[:, 1] - 2.0 * X[:, 6] * X[:, 1] / 3.0 - 300.0) / 50.0))


@pytest.mark.parametrize("params", [DetectParams(), SEED_RULE])
def test_fast_detection_matches_numpy(dense, numpy_only, params):
    for keep in (None, _keep) if params is not SEED_RULE else (None,):
        d1 = detect(dense.frames, params, 1.0, dense.offset, keep_model=keep)
        d0 = numpy_only(detect, dense.frames, params, 1.0, dense.offset, keep_model=keep)
        assert len(d1) > 100
        for k in ("item", "row", "col", "window", "box3"):
            np.testing.assert_array_equal(getattr(d1, k), getattr(d0, k))


def test_fast_detection_float_frames_with_gain(lib, numpy_only):
    fr = sim.simulate_frames(lib, 3, 64, 64, rate=20.0, adu_per_e=2.5, offset=10.0, dtype="<f4", seed=4)
    d1 = detect(fr.frames, DetectParams(), 2.5, 10.0, keep_model=_keep)
    d0 = numpy_only(detect, fr.frames, DetectParams(), 2.5, 10.0, keep_model=_keep)
    np.testing.assert_array_equal(d1.row, d0.row)
    np.testing.assert_allclose(d1.window, d0.window, rtol=1e-6)


def test_fast_candidate_features_match_numpy(dense):
    p = DetectParams()
    item, row, col, box, peak = candidates(dense.frames, p, 1.0, dense.offset)
    c = fast._candidates(dense.frames, fast.raw_level(p.seed_e, 1.0, dense.offset, dense.frames.dtype),
                         float(dense.offset), 1.0, np.float32(p.box_e), fast.candidate_capacity(dense.frames.shape))
    for a, b in zip((item, row, col, box, peak), c):
        np.testing.assert_array_equal(a, b)
    win = _gather(dense.frames, item, row, col, p.window_r, 1.0, dense.offset)
    X0 = candidate_features(dense.frames, item, row, col, box, peak, win, p, 1.0, dense.offset)
    X1 = fast._candidate_features(dense.frames, *c, p.window_r, p.threshold_e, float(dense.offset), 1.0)
    same = np.all(np.isclose(X0, X1, rtol=1e-6, atol=1e-5), axis=1)
    # ties between equally bright stronger neighbours may pick a different one: rare
    assert same.mean() > 0.998
    np.testing.assert_allclose(X1[:, :6], X0[:, :6], rtol=1e-6)


def test_fast_features_match_numpy(dense, numpy_only):
    det = detect(dense.frames, DetectParams(), 1.0, dense.offset)
    e = edge_distances(det.row, det.col, 160, 160, 6)
    X1, *s1 = features(det.window, 40.0, e)
    X0, *s0 = numpy_only(features, det.window, 40.0, e)
    for a, b in zip(s1, s0):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(X1, X0, rtol=1e-4, atol=1e-4)


def test_chunked_simulation_is_identical(lib, monkeypatch):
    a = sim.simulate_frames(lib, 6, 48, 48, rate=40.0, seed=5)
    monkeypatch.setattr(sim, "CHUNK", 37)
    b = sim.simulate_frames(lib, 6, 48, 48, rate=40.0, seed=5)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 1  # float sums in another order
    np.testing.assert_array_equal(a.truth_x, b.truth_x)
    np.testing.assert_allclose(a.truth_charge, b.truth_charge, rtol=1e-5)


def test_margin_booster_is_the_logistic_margin():
    xgb = pytest.importorskip("xgboost")
    from streamer.modalities.electron.model import margin_booster

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 5)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0.3).astype(np.float32)
    b = xgb.train(dict(objective="binary:logistic", max_depth=3, nthread=1), xgb.DMatrix(X, y), 20)
    m = margin_booster(b)
    np.testing.assert_allclose(m.inplace_predict(X), b.inplace_predict(X, predict_type="margin"), atol=1e-5)


def _merge(X):  # any deterministic pair score: close pairs of unequal probability look like one electron
    return (1.0 / (1.0 + np.exp(X[:, 27] - 3.0 - 4.0 * (X[:, 24] - X[:, 25])))).astype(np.float32)


def test_fast_pair_features_and_pair_stage_match_numpy(dense, numpy_only):
    """The pair stage (pairs of kept detections, their features, the drops) gives the same pairs and
    detections through the numba kernel and the numpy reference."""
    from streamer.modalities.electron.detect import PAIR_FEATURES, classify, pair_features

    p = DetectParams(keep_p=0.02, merge_p=0.5, merge_below=0.5)   # a low cut: many kept neighbours
    c = classify(dense.frames, p, 1.0, dense.offset, _keep)
    k = np.flatnonzero(c.keep)
    args = (dense.frames, c.item[k], c.row[k], c.col[k], c.peak[k], c.prob[k], c.X[k], p.window_r, 0.5, 1.0,
            dense.offset)
    a1, b1, X1 = pair_features(*args)
    a0, b0, X0 = numpy_only(pair_features, *args)
    assert len(a1) > 20
    o1, o0 = np.lexsort((b1, a1)), np.lexsort((b0, a0))
    np.testing.assert_array_equal(a1[o1], a0[o0])
    np.testing.assert_array_equal(b1[o1], b0[o0])
    np.testing.assert_allclose(X1[o1], X0[o0], rtol=1e-6)
    assert X1.shape[1] == len(PAIR_FEATURES)  # the kernel's column layout is the declared one
    assert np.all(c.prob[k][a1] >= c.prob[k][b1])     # a = the more probable of the two
    assert np.all(c.prob[k][b1] < 0.5)                 # only pairs whose weaker member is in doubt
    d1 = detect(dense.frames, p, 1.0, dense.offset, keep_model=_keep, merge_model=_merge)
    d0 = numpy_only(detect, dense.frames, p, 1.0, dense.offset, keep_model=_keep, merge_model=_merge)
    off = detect(dense.frames, p, 1.0, dense.offset, keep_model=_keep)
    for key in ("item", "row", "col", "box3"):
        np.testing.assert_array_equal(getattr(d1, key), getattr(d0, key))
    dropped = len(off) - len(d1)
    same = _merge(X1) >= 0.5
    assert 0 < dropped == len(np.unique(b1[same]))   # exactly the less probable member of each merged pair
