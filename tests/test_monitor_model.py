"""Qt-free monitor state: ring buffer, decimation, per-trace view, histogram, counters."""

import numpy as np
import pytest

from streamer.monitor.model import MonitorModel
from streamer.monitor.ring import RingColumns
from streamer.predictor import FLAG_LOW_PHOTONS, FLAG_NO_INTERVAL


def test_ring_keeps_newest_rows_in_order_across_wraps():
    ring = RingColumns(7, {"a": np.int64, "b": np.float32})
    pushed = []
    for start, n in [(0, 3), (3, 3), (6, 5), (11, 1), (12, 20), (32, 2)]:
        vals = np.arange(start, start + n)
        ring.push(a=vals, b=vals.astype(np.float32) / 2)
        pushed.extend(vals)
        expect = np.array(pushed[-7:])
        assert len(ring) == len(expect)
        np.testing.assert_array_equal(ring.column("a"), expect)
        np.testing.assert_array_equal(ring.column("b"), expect / 2)
        np.testing.assert_array_equal(ring.column("a", last=2), expect[-2:])
    assert ring.total == len(pushed)


def test_ring_rejects_mismatched_columns():
    ring = RingColumns(4, {"a": np.int64, "b": np.int64})
    with pytest.raises(ValueError, match="columns"):
        ring.push(a=np.arange(3))
    with pytest.raises(ValueError, match="length"):
        ring.push(a=np.arange(3), b=np.arange(2))
    with pytest.raises(ValueError):
        RingColumns(0, {"a": np.int64})


def _block(rng, n, traces, t0=0.0):
    d = rng.normal(20, 4, n).astype(np.float32)
    w = rng.uniform(4, 8, n).astype(np.float32)
    return dict(distance=d, lower=d - w, upper=d + w, flags=np.zeros(n, np.uint8),
                trace_id=rng.choice(traces, n), time_s=t0 + np.arange(n) * 1e-3)


def test_curve_is_bin_means_of_the_newest_tuples():
    rng = np.random.default_rng(1)
    model = MonitorModel(capacity=5000)
    blocks = [_block(rng, 1500, [1, 2]) for _ in range(4)]  # 6000 > capacity: oldest 1000 forgotten
    for b in blocks:
        model.ingest(**b)
    dist = np.concatenate([b["distance"] for b in blocks])
    lower = np.concatenate([b["lower"] for b in blocks])
    # 3000 newest tuples: k = ceil(3000/400) = 8 for the line, ceil(3000/100) = 30 for the band
    curve = model.curve(max_points=400, window=3000, band_points=100)
    assert curve.per_point == 8 and curve.band_per_point == 30 and curve.n_tuples == 3000
    m = 3000 // 8 * 8
    expect = dist[-m:].reshape(-1, 8).mean(axis=1)
    np.testing.assert_allclose(curve.distance, expect, rtol=1e-5)
    np.testing.assert_allclose(curve.x, np.arange(6000 - m, 6000).reshape(-1, 8).mean(axis=1))
    np.testing.assert_allclose(curve.lower, lower[-3000:].reshape(-1, 30).mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(curve.band_x, np.arange(3000, 6000).reshape(-1, 30).mean(axis=1))
    assert curve.x_label.startswith("tuple number")
    small = model.curve(max_points=400, window=300)  # fewer than max_points: raw tuples
    assert small.per_point == 1
    np.testing.assert_array_equal(small.distance, dist[-300:])


def test_nan_bounds_give_nan_band_not_errors():
    model = MonitorModel(capacity=100)
    model.ingest(np.full(50, 12.0, np.float32), flags=np.full(50, FLAG_NO_INTERVAL, np.uint8))
    curve = model.curve(max_points=10)
    assert np.isnan(curve.lower).all() and np.allclose(curve.distance, 12.0)
    c = model.refresh_counters()
    assert c.flag_counts["no interval"] == 50 and np.isnan(c.mean_width_nm)


def test_trace_selection_seeds_from_ring_and_follows_new_blocks():
    rng = np.random.default_rng(2)
    model = MonitorModel(capacity=1000, trace_capacity=300)
    first = _block(rng, 800, [5, 6, 7])
    model.ingest(**first)
    model.select_trace(6)
    np.testing.assert_array_equal(model.trace_ring.column("distance"), first["distance"][first["trace_id"] == 6])
    second = _block(rng, 2000, [5, 6], t0=1.0)  # main ring overflows; the trace ring keeps trace 6 only
    model.ingest(**second)
    both = np.concatenate([first["distance"][first["trace_id"] == 6], second["distance"][second["trace_id"] == 6]])
    np.testing.assert_array_equal(model.trace_ring.column("distance"), both[-300:])
    curve = model.curve(max_points=1000)
    assert curve.x_label == "acquisition time (s)" and len(curve.x) == 300
    assert set(model.traces()) == {5, 6, 7} and model.traces()[-1] == 7  # 7 seen longest ago
    model.select_trace(None)
    assert len(model.curve(max_points=2000).x) == 1000


def test_histogram_counts_every_finite_distance_with_clipping():
    model = MonitorModel(capacity=100, hist_range_nm=(0, 50), hist_bin_nm=1.0)
    model.ingest(np.array([-3, 0.2, 10.5, 10.7, 49.9, 80, np.nan], np.float32))
    edges, counts = model.histogram()
    assert len(edges) == 51 and counts.sum() == 6
    assert counts[0] == 2 and counts[10] == 2 and counts[-1] == 2


def test_counters_seq_gaps_rate_latency_errors():
    now = [100.0]
    model = MonitorModel(capacity=100, clock=lambda: now[0], rate_window_s=2.0)
    for seq in (0, 1, 2, 5, 6, 6, 9):  # 3,4,7,8 missed; one duplicate
        model.note_message(seq, "m1")
    model.note_message(0, "m1", stream="other")  # another stream has its own sequence
    assert model.counters.missed_messages == 4 and model.counters.duplicate_messages == 1
    for _ in range(4):
        model.ingest(np.ones(50, np.float32), latency_s=np.array([0.002, 0.004]))
        now[0] += 0.5
    c = model.refresh_counters()
    assert c.rate == pytest.approx(200 / 2.0)
    assert c.latency_ms["p50"] == pytest.approx(3.0)
    model.note_error("bad-size: counts")
    model.ingest(np.ones(3, np.float32), flags=np.array([FLAG_LOW_PHOTONS, 0, 0], np.uint8))
    c = model.refresh_counters()
    assert c.rejected == 1 and "bad-size" in c.last_error and c.flag_counts["low photons"] == 1
    assert c.model_ids == ("m1",)
    with pytest.raises(ValueError, match="length"):
        model.ingest(np.ones(3, np.float32), lower=np.ones(2, np.float32))


def test_low_photon_tuples_are_counted_but_not_drawn():
    d = np.array([10, 11, 50, 51, 12, 13], np.float32)  # 50/51: background-only tuples, flagged
    flags = np.array([0, 0, FLAG_LOW_PHOTONS, FLAG_LOW_PHOTONS, 0, 0], np.uint8)
    m = MonitorModel(capacity=100)
    m.ingest(d, d - 2, d + 2, flags=flags)
    curve = m.curve(max_points=3, band_points=3)  # bins of 2 tuples: the flagged pair leaves a gap
    np.testing.assert_allclose(curve.distance, [10.5, np.nan, 12.5])
    np.testing.assert_allclose(curve.upper, [12.5, np.nan, 14.5])
    _, counts = m.histogram()
    assert counts.sum() == 4
    assert m.refresh_counters().flag_counts["low photons"] == 2
    shown = MonitorModel(capacity=100, hide_flags=0)  # streamer monitor --show-flagged
    shown.ingest(d, d - 2, d + 2, flags=flags)
    np.testing.assert_allclose(shown.curve(max_points=3).distance, [10.5, 50.5, 12.5])
    assert shown.histogram()[1].sum() == 6
