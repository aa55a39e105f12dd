"""simulate -> Recording -> report (the `streamer demo` path without the pipeline)."""

import argparse

import numpy as np

from streamer.core.recording import load_recording
from streamer.modalities.electron import commands
from streamer.modalities.electron.predictor import make_predictor


def test_simulate_save_load_report(tmp_path, monkeypatch, lib):
    monkeypatch.setattr("streamer.modalities.electron.physics.load_library", lambda *a, **k: lib)
    p = argparse.ArgumentParser()
    commands.add_simulate_arguments(p)
    args = p.parse_args(["--frames", "60", "--size", "100", "--split", "all", "--seed", "3"])
    rec = commands.simulate(args)
    assert rec.arrays["frames"].shape == (60, 100, 100) and rec.header["height"] == 100
    path = rec.save(tmp_path / "e.npz")
    rec2 = load_recording(path)
    assert np.array_equal(rec2.arrays["frames"], rec.arrays["frames"]) and rec2.modality == "electron"
    # results as the sink persists them: two packets of 30 frames
    from streamer.core.modality import Packet

    pred = make_predictor("centroid3x3")
    cols = {"seq": [], "row": [], "det_seq": [], "det_item": [], "det_x": [], "det_y": [], "det_radius": []}
    for seq in range(2):
        f = rec2.arrays["frames"][seq * 30:(seq + 1) * 30]
        pk = Packet("s", seq, 0.0, "electron", "frames", 30, {**rec2.header, "n": 30}, {"frames": f})
        out = pred.predict(pk)
        cols["seq"] += [seq] * 30
        cols["row"] += list(range(30))
        cols["det_seq"] += [seq] * len(out["x"])
        cols["det_item"] += out["item"].tolist()
        cols["det_x"] += out["x"].tolist()
        cols["det_y"] += out["y"].tolist()
        cols["det_radius"] += out["radius"].tolist()
    text, ok = commands.report(rec2, {k: np.asarray(v) for k, v in cols.items()}, args)
    assert ok, text
    assert "efficiency" in text
