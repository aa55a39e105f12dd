"""The track cutter: windows of consecutive frames, centring, edge handling."""

import numpy as np
import pytest

from streamer.modalities.diffusion.loaders import cut_stacks, load_tracks_csv


def test_cut_stacks_windows_and_centre(tmp_path):
    f, h, w = 40, 100, 120
    movie = np.zeros((f, h, w), np.uint16)
    # particle 7 at (x=50, y=40) in frames 0..33 (two full windows of 16), particle 9 near the edge 5..20
    fr7 = np.arange(34)
    movie[fr7, 40, 50] = 1000
    fr9 = np.arange(5, 21)
    movie[fr9, 3, 118] = 500
    frame = np.r_[fr7, fr9]
    x = np.r_[np.full(34, 50.0), np.full(16, 118.0)]
    y = np.r_[np.full(34, 40.0), np.full(16, 3.0)]
    part = np.r_[np.full(34, 7), np.full(16, 9)]
    perm = np.random.default_rng(0).permutation(len(frame))  # any row order
    st, pid, first = cut_stacks(movie, frame[perm], x[perm], y[perm], part[perm])
    assert st.shape == (3, 16, 64, 64) and list(pid) == [7, 7, 9] and list(first) == [0, 16, 5]
    assert (st[0, :, 32, 32] == 1000).all()  # centred
    assert (st[2].max(axis=(1, 2)) == 500).all()  # edge crop shifted inside, molecule kept
    p = tmp_path / "t.csv"
    np.savetxt(p, np.c_[frame, x, y, part], delimiter=",", header="frame,x,y,particle", comments="")
    cols = load_tracks_csv(p)
    assert len(cols[0]) == 50


def test_cut_stacks_skips_gaps_and_bad_input():
    movie = np.zeros((20, 64, 64), np.uint16)
    frame = np.r_[np.arange(8), np.arange(9, 18)]  # frame 8 missing: no 16 consecutive frames
    st, _, _ = cut_stacks(movie, frame, np.full(17, 32.0), np.full(17, 32.0), np.zeros(17))
    assert len(st) == 0
    with pytest.raises(ValueError):
        cut_stacks(np.zeros((5, 32, 32)), np.arange(16), np.zeros(16), np.zeros(16), np.zeros(16))


def test_cut_command_tiff_movie_and_csv_tracks_to_a_replay_file(tmp_path):
    """A movie saved as TIFF plus trackpy-style tracks -> a diffusion replay file the pipeline plays."""
    import tifffile

    from streamer.cli import main
    from streamer.core.recording import load_recording

    rng = np.random.default_rng(0)
    movie = rng.poisson(5, (40, 96, 96)).astype(np.uint16)
    movie[:, 40:43, 50:53] += 500  # a still particle
    tifffile.imwrite(tmp_path / "movie.tif", movie)
    rows = ["frame,x,y,particle"] + [f"{f},{51.0 + 0.1 * f},{41.0},7" for f in range(40)]
    (tmp_path / "tracks.csv").write_text("\n".join(rows) + "\n")
    assert main(["cut", "--modality", "diffusion", str(tmp_path / "movie.tif"), str(tmp_path / "tracks.csv"),
                 str(tmp_path / "cut.npz"), "--frame-s", "0.01"]) == 0
    rec = load_recording(tmp_path / "cut.npz")
    assert rec.arrays["stacks"].shape == (2, 16, 64, 64) and rec.header["frame_s"] == 0.01
    assert rec.truth["particle"].tolist() == [7, 7] and rec.truth["first_frame"].tolist() == [0, 16]
    # the bright spot sits inside every crop
    assert (rec.arrays["stacks"].max(axis=(2, 3)) > 400).all()
