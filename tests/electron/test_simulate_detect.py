"""Frames from the library, detection and the seed's centroid baselines."""

import numpy as np

from streamer.modalities.electron.detect import BASELINES, SEED_RULE, DetectParams, baseline_xy, centroid, detect
from streamer.modalities.electron.metrics import isolated, knob_curve, match
from streamer.modalities.electron.simulate import _symmetry, simulate_frames


def test_frame_statistics(lib):
    fr = simulate_frames(lib, 400, 100, 100, rate=10.0, noise_e=20.0, offset=100.0, seed=1)
    assert fr.frames.dtype == np.dtype("<u2")
    counts = np.bincount(fr.truth_item, minlength=400)
    assert abs(counts.mean() - 10) < 0.5 and abs(counts.var() / counts.mean() - 1) < 0.25  # Poisson
    e = fr.frames.astype(float) - 100.0
    assert abs(np.median(e) - 0) < 2 and 18 < 1.4826 * np.median(np.abs(e - np.median(e))) < 22  # read noise
    assert (fr.truth_x >= -0.5).all() and (fr.truth_x < 99.5).all()


def test_float_frames_and_gain(lib):
    fr = simulate_frames(lib, 50, 64, 64, rate=5.0, adu_per_e=2.5, offset=10.0, dtype="<f4", seed=2)
    assert fr.frames.dtype == np.dtype("<f4")
    det = detect(fr.frames, DetectParams(), adu_per_e=2.5, offset=10.0)
    m = match(det.item, det.col, det.row, fr.truth_item, fr.truth_x, fr.truth_y)
    assert (m >= 0).mean() > 0.9


def test_symmetry_keeps_entry_and_charge_consistent(lib, rng):
    st, sb = lib.stamps[:200], lib.sub[:200]
    for code in range(8):
        s2, b2 = _symmetry(st, sb, np.full(200, code))
        assert np.allclose(s2.sum(axis=(1, 2)), st.sum(axis=(1, 2)), rtol=1e-5)
        # the charge centroid keeps the same distance to the entry under every symmetry
        k = np.arange(st.shape[-1])
        def dist(s, b):
            t = s.sum(axis=(1, 2))
            cx, cy = (s.sum(axis=1) * k).sum(1) / t, (s.sum(axis=2) * k).sum(1) / t
            return np.hypot(cx - (12 + b[:, 0] - 0.5), cy - (12 + b[:, 1] - 0.5))
        assert np.allclose(dist(s2, b2), dist(st, sb), atol=1e-3)


def test_noise_only_frames_give_almost_no_detections():
    rng = np.random.default_rng(3)
    frames = rng.normal(0, 20, (500, 100, 100)).astype(np.float32)
    det = detect(frames, SEED_RULE)
    assert len(det) <= 40  # < 1% of the 5,000 electrons such frames would hold at 10 e-/frame


def test_sparse_detection_efficiency_and_baseline_ranking(lib):
    fr = simulate_frames(lib, 500, 100, 100, rate=10.0, seed=4)
    det = detect(fr.frames, SEED_RULE, 1.0, fr.offset)
    m = match(det.item, det.col, det.row, fr.truth_item, fr.truth_x, fr.truth_y)
    iso = isolated(fr.truth_item, fr.truth_x, fr.truth_y)
    assert (m[iso] >= 0).mean() > 0.97
    assert (len(det) - (m >= 0).sum()) / len(m) < 0.02
    sel = np.nonzero(iso & (m >= 0))[0]
    err = {}
    for name in BASELINES:
        x, y = baseline_xy(det, name)
        err[name] = np.hypot(x[m[sel]] - fr.truth_x[sel], y[m[sel]] - fr.truth_y[sel]).mean()
    # the seed's finding: centroids beat the max pixel; the 3x3 beats the noisier 5x5
    assert err["centroid3x3_th"] < err["maxpixel"] and err["centroid3x3"] < err["centroid5x5"]


def test_centroid_is_pixel_locked():
    """A narrow spot's 3x3 centroid is pulled toward the pixel centre (why a model can do better)."""
    from scipy.special import erf

    true = np.linspace(-0.45, 0.45, 19)
    edges = np.arange(-6.5, 7.0)
    cdf = 0.5 * (1 + erf((edges[None, :] - true[:, None]) / (np.sqrt(2) * 0.3)))
    px = np.diff(cdf, axis=1)  # sigma 0.3 px spot
    win = 400 * px[:, None, :] * np.diff(0.5 * (1 + erf(edges / (np.sqrt(2) * 0.3))))[None, :, None]
    dx, _ = centroid(win.astype(np.float32), 1, 0.0)
    assert np.all(np.abs(dx[np.abs(true) > 0.1]) < np.abs(true[np.abs(true) > 0.1]))


def test_knob_curve_is_monotone_for_an_informative_score():
    rng = np.random.default_rng(0)
    err = rng.exponential(1.0, 5000)
    rows = knob_curve(err, err + rng.normal(0, 0.3, 5000), 5000)
    means = [r[1] for r in rows]
    assert all(a <= b + 1e-9 for a, b in zip(means, means[1:]))
    assert abs(means[-1] - err.mean()) < 1e-9


def test_double_counts_are_second_detections_of_matched_electrons():
    """Frame 0: electron A detected twice (1 px and 4 px away), electron B once; frame 1: a
    detection with no electron within 6 px (a count of nothing, not a double count), and one at
    A's position but in another frame (frames never mix)."""
    from streamer.modalities.electron.metrics import double_counts

    tru_item, tru_x, tru_y = np.array([0, 0]), np.array([10.0, 40.0]), np.array([10.0, 40.0])
    det_item = np.array([0, 0, 0, 1, 1])
    det_x = np.array([11.0, 14.0, 40.0, 80.0, 10.0])
    det_y = np.array([10.0, 10.0, 41.0, 80.0, 10.0])
    m = match(det_item, det_x, det_y, tru_item, tru_x, tru_y)
    assert m.tolist() == [0, 2]
    assert double_counts(det_item, det_x, det_y, tru_item, tru_x, tru_y, m) == 1
    assert double_counts(det_item[:1], det_x[:1], det_y[:1], tru_item, tru_x, tru_y,
                         match(det_item[:1], det_x[:1], det_y[:1], tru_item, tru_x, tru_y)) == 0


def test_knob_ratio_interval_holds_the_estimate_and_sees_correlated_blocks():
    """The knob ratio's bootstrap interval over blocks of frames: it holds the full-sample ratio, and
    where events of one block share their error (a frame's conditions), resampling blocks gives a
    wider interval than resampling events as if they were independent."""
    from streamer.modalities.electron.metrics import knob_curve, knob_ratio_interval

    rng = np.random.default_rng(0)
    n = 20000
    block = np.arange(n) // 100
    scale = rng.gamma(2.0, 0.5, n)                       # per-event error scale; the scores see it
    shared = rng.lognormal(0.0, 0.3, block.max() + 1)[block]   # per-block factor the scores do not see
    err_a = shared * scale * rng.rayleigh(0.5, n)
    err_b = 1.6 * scale * rng.rayleigh(0.5, n)
    s_a, s_b = scale + rng.normal(0, 0.1, n), scale + rng.normal(0, 0.8, n)
    est = knob_curve(err_a, s_a, n, [0.8])[0][1] / knob_curve(err_b, s_b, n, [0.8])[0][1]
    lo, hi = knob_ratio_interval(err_a, s_a, err_b, s_b, block)
    assert lo < est < hi and hi - lo < 0.2
    lo2, hi2 = knob_ratio_interval(err_a, s_a, err_b, s_b, np.arange(n))
    assert hi2 - lo2 < 0.8 * (hi - lo)
