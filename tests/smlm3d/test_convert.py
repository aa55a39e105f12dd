"""Real acquisitions in: camera stacks (TIFF / .npy) + ThunderSTORM ground truth -> replay file -> run."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.cli import main
from streamer.core.recording import load_recording
from streamer.modalities.smlm3d.loaders import load_stack, truth_from_csv, write_thunderstorm_csv
from streamer.modalities.smlm3d.simulate import SimConfig, simulate_frames

tifffile = pytest.importorskip("tifffile")


@pytest.fixture(scope="module")
def acquisition(tmp_path_factory):
    d = tmp_path_factory.mktemp("acq")
    frames, truth = simulate_frames(SimConfig(n_frames=40, photons=5000, background=50, density=1.0,
                                              sampling="csr", seed=11))
    tifffile.imwrite(d / "movie.tif", frames)
    write_thunderstorm_csv(d / "gt.csv", {k: truth[k] for k in ("item", "x", "y", "z", "photons")})
    return d, frames, truth


def test_stack_loads_as_camera_counts(tmp_path, acquisition):
    d, frames, _ = acquisition
    np.testing.assert_array_equal(load_stack(d / "movie.tif"), frames)
    np.save(tmp_path / "f.npy", frames[0].astype(np.float32))          # one 2D float image of whole counts
    one = load_stack(tmp_path / "f.npy")
    assert one.shape == (1, 64, 64) and one.dtype == np.uint16
    np.testing.assert_array_equal(one[0], frames[0])


@pytest.mark.parametrize("bad, message", [
    (np.full((2, 32, 32), 1.5, np.float32), "whole ADU"),
    (np.full((2, 32, 32), np.nan, np.float32), "NaN"),
    (np.full((2, 32, 32), 70000, np.int32), "16-bit"),
    (np.full((2, 32, 32), -3, np.int16), "16-bit"),
    (np.zeros((2, 8, 8), np.uint16), "fit window"),
    (np.zeros((2, 3, 32, 32), np.uint16), "expected frames"),
])
def test_bad_stacks_are_refused_with_a_reason(tmp_path, bad, message):
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match=message):
        load_stack(tmp_path / "bad.npy")


def test_truth_outside_the_stack_is_refused(acquisition):
    d, frames, truth = acquisition
    t = truth_from_csv(d / "gt.csv", len(frames))
    np.testing.assert_array_equal(t["item"], truth["item"])
    np.testing.assert_allclose(t["x"], truth["x"], rtol=1e-6)
    assert np.isnan(t["background"]).all() and len(t["background"]) == len(frames)
    with pytest.raises(ValueError, match="outside the stack"):
        truth_from_csv(d / "gt.csv", int(truth["item"].max()))


def test_convert_then_run_reports_against_the_truth(tmp_path, acquisition, capsys):
    d, frames, truth = acquisition
    rep = tmp_path / "rep.npz"
    assert main(["convert", "--modality", "smlm3d", str(d / "movie.tif"), str(rep), "--truth", str(d / "gt.csv"),
                 "--pixel-nm", "100", "--first-frame", "1000"]) == 0
    rec = load_recording(rep)
    assert rec.modality == "smlm3d" and rec.header["pixel_nm"] == 100.0 and rec.header["baseline"] == 100.0
    assert rec.arrays["frame_id"][0] == 1000 and len(rec.truth["x"]) == len(truth["x"])
    capsys.readouterr()
    assert main(["run", "--modality", "smlm3d", str(rep), "--out", str(tmp_path / "out"), "-w", "1",
                 "--packet-size", "20", "--predictor", "mle"]) == 0
    text = capsys.readouterr().out
    assert "every frame exactly once" in text
    assert float(text.split("JI ")[1].split(" ")[0]) > 85          # the replayed stack localizes
    assert "CRLB nan" in text                                        # no background in a CSV: no floor claimed


def test_convert_refuses_a_csv_as_the_stack(acquisition, tmp_path, capsys):
    d, *_ = acquisition
    assert main(["convert", "--modality", "smlm3d", str(d / "gt.csv"), str(tmp_path / "x.npz")]) == 2
    assert "camera stack" in capsys.readouterr().err
