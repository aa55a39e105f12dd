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
