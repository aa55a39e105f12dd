"""Simulator regimes, reproducibility and the replay file format."""

import json

import numpy as np
import pytest

from streamer.cli import main
from streamer.modalities.minflux.recording import load_recording
from streamer.modalities.minflux.simulate import STATE_BACKGROUND, STATE_ONE, STATE_TWO, simulate_dynamic, simulate_static


def test_static_regime_ranges_and_grouping():
    rec = simulate_static(50, 40, seed=1)
    t = rec.truth
    assert len(rec) == 2000 and rec.tuples.counts.dtype == np.uint16
    assert 6.0 <= t["d_nm"].min() and t["d_nm"].max() <= 30.0
    assert 84 <= rec.tuples.photons.mean() <= 108
    # one ruler = one trace id with one distance
    per_trace = {tid: np.unique(t["d_nm"][rec.tuples.trace_id == tid]) for tid in np.unique(rec.tuples.trace_id)}
    assert len(per_trace) == 50 and all(len(v) == 1 for v in per_trace.values())
    np.testing.assert_allclose(rec.tuples.positions[:, :, 2] - rec.tuples.positions[:, :, 1], 15.0, atol=1e-3)


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = simulate_static(5, 10, seed=3), simulate_static(5, 10, seed=3), simulate_static(5, 10, seed=4)
    np.testing.assert_array_equal(a.tuples.counts, b.tuples.counts)
    assert not np.array_equal(a.tuples.counts, c.tuples.counts)


def test_dynamic_regime_states_timing_and_photons():
    rec = simulate_dynamic(6, 5000, seed=2)
    state = rec.truth["state"].reshape(6, 5000)
    assert set(np.unique(rec.truth["d_nm"])) <= {15.0, 20.0, 30.0}
    assert np.all(np.diff(state, axis=1) <= 0), "states only go 2 -> 1 -> 0"
    assert np.all(state[:, 0] == STATE_TWO) and np.all(state[:, -1] == STATE_BACKGROUND)
    assert np.allclose(np.diff(rec.tuples.time_s[:5000]), 1e-3)
    ph = rec.tuples.photons
    two = ph[rec.truth["state"] == STATE_TWO]
    assert 170 < two.mean() < 230
    assert np.mean(two) > np.median(two), "right-skewed photon counts"
    assert ph[rec.truth["state"] == STATE_ONE].mean() < two.mean()
    assert ph[rec.truth["state"] == STATE_BACKGROUND].mean() < 15


def test_replay_file_round_trip_and_errors(tmp_path):
    rec = simulate_dynamic(2, 300, seed=0)
    path = rec.save(tmp_path / "r.npz")
    back = load_recording(path)
    np.testing.assert_array_equal(back.tuples.counts, rec.tuples.counts)
    np.testing.assert_array_equal(back.tuples.positions, rec.tuples.positions.astype(np.float32))
    np.testing.assert_array_equal(back.truth["state"], rec.truth["state"])
    assert back.meta["regime"] == "dynamic" and back.meta["version"] == 1
    bad = tmp_path / "bad.npz"
    np.savez(bad, counts=np.zeros((3, 6)), positions=np.zeros((3, 2, 3)), meta=np.array(json.dumps({"format": "minflux-replay", "version": 1})))
    with pytest.raises(ValueError, match="counts must be"):
        load_recording(bad)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a replay recording"):
        load_recording(tmp_path / "junk.npz")


def test_cli_simulate_then_estimate(tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["simulate", str(out), "--traces", "20", "--tuples-per-trace", "50", "--seed", "9"]) == 0
    assert main(["estimate", str(out), "--estimators", "closed-form"]) == 0
    text = capsys.readouterr().out
    assert "closed-form_rmse" in text and "crb" in text
    assert main(["estimate", str(tmp_path / "missing.npz")]) == 2
