"""Qt-free state of the MINFLUX monitor view: ring buffers, decimation, per-trace view, histogram."""

import numpy as np
import pytest

from streamer.core import wire
from streamer.core.modality import Packet
from streamer.modalities.minflux.predictor import FLAG_LOW_PHOTONS, FLAG_NO_INTERVAL
from streamer.modalities.minflux.view import MinfluxView
from streamer.modalities.minflux.view_model import MinfluxViewModel
from streamer.modalities.minflux.wire import RESULTS


def _block(rng, n, traces, t0=0.0):
    d = rng.normal(20, 4, n).astype(np.float32)
    w = rng.uniform(4, 8, n).astype(np.float32)
    return dict(distance=d, lower=d - w, upper=d + w, flags=np.zeros(n, np.uint8),
                trace_id=rng.choice(traces, n), time_s=t0 + np.arange(n) * 1e-3)


def test_curve_is_bin_means_of_the_newest_tuples():
    rng = np.random.default_rng(1)
    model = MinfluxViewModel(capacity=5000)
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
    assert model.tuples == 6000 and len(model.ring) == 5000


def test_nan_bounds_give_nan_band_not_errors():
    model = MinfluxViewModel(capacity=100)
    model.ingest(np.full(50, 12.0, np.float32), flags=np.full(50, FLAG_NO_INTERVAL, np.uint8))
    curve = model.curve(max_points=10)
    assert np.isnan(curve.lower).all() and np.allclose(curve.distance, 12.0)
    s = model.summary()
    assert s.flag_counts["no interval"] == 50 and np.isnan(s.mean_width_nm) and s.tuples == 50
    with pytest.raises(ValueError, match="length"):
        model.ingest(np.ones(3, np.float32), lower=np.ones(2, np.float32))


def test_trace_selection_seeds_from_ring_and_follows_new_blocks():
    rng = np.random.default_rng(2)
    model = MinfluxViewModel(capacity=1000, trace_capacity=300)
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
    model = MinfluxViewModel(capacity=100, hist_range_nm=(0, 50), hist_bin_nm=1.0)
    model.ingest(np.array([-3, 0.2, 10.5, 10.7, 49.9, 80, np.nan], np.float32))
    edges, counts = model.histogram()
    assert len(edges) == 51 and counts.sum() == 6
    assert counts[0] == 2 and counts[10] == 2 and counts[-1] == 2


def test_low_photon_tuples_are_counted_but_not_drawn():
    d = np.array([10, 11, 50, 51, 12, 13], np.float32)  # 50/51: background-only tuples, flagged
    flags = np.array([0, 0, FLAG_LOW_PHOTONS, FLAG_LOW_PHOTONS, 0, 0], np.uint8)
    m = MinfluxViewModel(capacity=100)
    m.ingest(d, d - 2, d + 2, flags=flags)
    curve = m.curve(max_points=3, band_points=3)  # bins of 2 tuples: the flagged pair leaves a gap
    np.testing.assert_allclose(curve.distance, [10.5, np.nan, 12.5])
    np.testing.assert_allclose(curve.upper, [12.5, np.nan, 14.5])
    _, counts = m.histogram()
    assert counts.sum() == 4
    assert m.summary().flag_counts["low photons"] == 2
    shown = MinfluxViewModel(capacity=100, hide_flags=0)  # streamer monitor --show-flagged
    shown.ingest(d, d - 2, d + 2, flags=flags)
    np.testing.assert_allclose(shown.curve(max_points=3).distance, [10.5, 50.5, 12.5])
    assert shown.histogram()[1].sum() == 6


def _result(seq, distance, trace_id=None, time_s=None):
    """A decoded MINFLUX result dict, encoded and decoded as the sink and the shell do."""
    n = len(distance)
    d = np.asarray(distance, np.float32)
    out = {"distance": d, "lower": d - 1, "upper": d + 1, "flags": np.zeros(n, np.uint8),
           "photons": np.full(n, 100, np.uint32), "centre": np.zeros((n, 2), np.float32)}
    arrays = {}
    if trace_id is not None:
        out["trace_id"] = arrays["trace_id"] = np.asarray(trace_id, np.int64)
    if time_s is not None:
        out["time"] = arrays["time"] = np.asarray(time_s, np.float64)
    packet = Packet("s", seq, 1.0, "minflux", "tuples", n, {}, arrays)
    return wire.decode_message(wire.encode_result(packet, RESULTS, out, "test-model"))


def test_view_ingests_decoded_results_headless():
    """MinfluxView follows the View protocol; ingest and refresh work before any widget exists."""
    view = MinfluxView(capacity=1000, window=500, trace=2, show_flagged=True, fps=20, unknown=object())
    assert view.title and view.model.hide_flags == 0 and view.model.selected_trace == 2
    view.ingest([_result(0, [10, 11], trace_id=[1, 2], time_s=[0.1, 0.2]),
                 _result(1, [12, 13, 14])])  # no trace id / time: unknown (-1 / NaN)
    view.refresh()  # no widget yet: nothing to draw, no Qt needed
    m = view.model
    np.testing.assert_array_equal(m.ring.column("distance"), [10, 11, 12, 13, 14])
    np.testing.assert_array_equal(m.ring.column("trace"), [1, 2, -1, -1, -1])
    assert np.isnan(m.ring.column("time")[2:]).all() and m.ring.column("time")[1] == pytest.approx(0.2)
    np.testing.assert_array_equal(m.trace_ring.column("distance"), [11])
    np.testing.assert_allclose(m.ring.column("upper") - m.ring.column("lower"), 2.0)
    assert m.summary().mean_width_nm == pytest.approx(2.0)
    view.ingest([])
    assert m.tuples == 5


def test_self_calibrating_results_show_states_calibration_and_merged_trace_answer():
    """Results of the `general` predictor from two workers (decoded as the monitor gets them): the
    photon trace splits by segmented state, the instrument is the merge of both workers' partial
    sums, and a selected trace's answer uses every worker's tuples."""
    from streamer.modalities.minflux import MODALITY, live, offgrid, partials
    from streamer.modalities.minflux.view import format_instrument
    from streamer.modalities.minflux.wire import encode_batch

    rec = offgrid.simulate_stream(0.93, 2.0, 3000, seed=4, distances=(12.5, 30.0))
    lps = [live.LivePredictor(backend="xgboost") for _ in range(2)]
    adapters = []
    for lp in lps:
        a = live.LiveModalityPredictor.__new__(live.LiveModalityPredictor)
        a.inner, a.model_id = lp, lp.model_id
        adapters.append(a)
    decoded, parts = [], []
    for k, i in enumerate(range(0, len(rec), 500)):
        packet = wire.decode_packet(wire.unpack(encode_batch("s", k, rec.tuples[i:i + 500])), MODALITY)
        out = adapters[k % 2].predict(packet)
        decoded.append(wire.decode_message(wire.encode_result(packet, RESULTS, out, "m")))
        parts.append(out)
    vm = MinfluxViewModel(capacity=20_000)
    vm.ingest_results(decoded[:6])
    vm.ingest_results(decoded[6:])
    assert vm.has_states()
    sc = vm.state_curve(max_points=100)
    assert set(sc.photons) == {"2-on", "1-on", "background"}
    two, bg = np.nanmean(sc.photons["2-on"]), np.nanmean(sc.photons["background"])
    assert two > 3 * bg  # the steps a user reads: 2-on far above background-only
    inst = vm.instrument()
    cat = {c: np.concatenate([p[c] for p in parts]) for c in ("part_trace", "part_kind", "part_n", "part_sums")}
    cal = partials.calibration(cat["part_trace"], cat["part_kind"], cat["part_n"], cat["part_sums"])
    assert inst.stream == "s" and inst.calibrated and np.isclose(inst.v0, cal["v0"]) and abs(inst.v0 - 0.93) < 0.02
    assert np.isfinite(inst.v0_live) and inst.trace is None and "v0 0.9" in format_instrument(inst)
    vm.select_trace(1)
    inst = vm.instrument()
    red = partials.reduce(np.full(len(cat["part_n"]), "s"), cat["part_trace"], cat["part_kind"], cat["part_n"],
                          cat["part_sums"])
    assert inst.trace_two_on == red["two_on_tuples"][1] > 1000
    assert np.isclose(inst.trace_distance, red["distance"][1]) and abs(inst.trace_distance - 30.0) < 4
    assert "trace 1: " in format_instrument(inst)
    # an older worker's results carry (m, 2, 4) sums: read with the squared form, nothing lost
    legacy = [{**r, "part_sums": np.asarray(r["part_sums"]).reshape(-1, 2, 6)[:, :, :4].copy()}
              if r.get("part_sums") is not None else r for r in decoded]
    old_vm = MinfluxViewModel(capacity=20_000)
    old_vm.ingest_results(legacy)
    old_vm.select_trace(1)
    old_inst = old_vm.instrument()
    old_cal = partials.calibration(cat["part_trace"], cat["part_kind"], cat["part_n"], cat["part_sums"][:, :, :4])
    assert np.isclose(old_inst.v0, old_cal["v0"]) and not np.isclose(old_inst.v0, inst.v0, rtol=1e-9, atol=0)
    assert abs(old_inst.v0 - 0.93) < 0.02 and abs(old_inst.trace_distance - 30.0) < 4
