"""Picasso vs ours: coordinate conventions on single synthetic emitters (pixel centre vs corner, x/y, nm vs px, z).

Runs Picasso through its own virtualenv (bench/peers/README.md); skipped when that is absent, as in CI.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


sys.path.insert(0, str(ROOT / "bench" / "peers"))  # bench/ is no package
bench = importlib.import_module("smlm3d_picasso")
pytestmark = pytest.mark.skipif(not bench.peer_available(),
                                reason="Picasso virtualenv absent (see bench/peers/README.md)")

# one emitter per frame, far from pixel centres and with x != y so that a half-pixel shift or an x/y
# swap is many times the tolerance
TRUE_X = np.array([3217.3, 2461.8, 4033.0])
TRUE_Y = np.array([2548.9, 3890.2, 2712.6])
TRUE_Z = np.array([-300.0, 0.0, 250.0])


@pytest.fixture(scope="module")
def single_emitters(tmp_path_factory):
    from streamer.modalities.smlm3d.simulate import Camera, camera_frames, render

    n = len(TRUE_X)
    truth = {"item": np.arange(n), "x": TRUE_X, "y": TRUE_Y, "z": TRUE_Z, "photons": np.full(n, 20_000.0)}
    rng = np.random.default_rng(3)
    frames = camera_frames(render(truth, n, 64, 64, 100.0, 10.0), Camera(), rng)
    bead, _ = bench.bead_stack()
    meta = {"pixel_nm": 100.0, "baseline": 100.0, "adu_per_photon": 1.0, "bead_step_nm": bench.BEAD_STEP_NM,
            "bead_ng": 20_000.0, "boxes": [9], "z_filter": 0,
            "cells": [{"name": "one", "ng": [2000.0], "boxes": [9]}]}
    res = bench.run_peer({"bead": bead, "frames_one": frames}, meta, tmp_path_factory.mktemp("picasso"))
    return frames, res["locs_one|2000|9"]


def test_picasso_finds_each_emitter_once(single_emitters):
    _, locs = single_emitters
    assert sorted(locs[:, 0].astype(int).tolist()) == [0, 1, 2]


def test_pixel_centre_convention_and_xy_order(single_emitters):
    _, locs = single_emitters
    locs = locs[np.argsort(locs[:, 0])]
    x, y = bench.to_ours_nm(locs[:, 1], locs[:, 2], 100.0)
    # 20,000 photons on 10/px: precision ~1-2 nm, so 8 nm is a convention check, not a precision check
    np.testing.assert_allclose(x, TRUE_X, atol=8.0)
    np.testing.assert_allclose(y, TRUE_Y, atol=8.0)
    # the alternatives are off by far more than the tolerance: corner origin (no +0.5) or swapped axes
    assert np.all(np.abs(locs[:, 1] * 100.0 - TRUE_X) > 40.0)
    assert np.all(np.abs(x - TRUE_Y) > 100.0)


def test_z_sign_and_scale_after_bead_calibration(single_emitters):
    _, locs = single_emitters
    locs = locs[np.argsort(locs[:, 0])]
    # Picasso's z = 0 is where its calibrated widths cross; ours is the focal midplane: a few nm apart
    np.testing.assert_allclose(locs[:, 3], TRUE_Z, atol=30.0)


def test_ours_agrees_on_the_same_frames(single_emitters):
    from streamer.modalities.smlm3d.predictors import MLEPredictor

    frames, locs = single_emitters
    out = MLEPredictor().predict_frames(frames)
    keep = (out["flags"] & 1) == 0
    assert sorted(out["item"][keep].tolist()) == [0, 1, 2]
    o = np.argsort(out["item"][keep])
    px, py = bench.to_ours_nm(locs[np.argsort(locs[:, 0]), 1], locs[np.argsort(locs[:, 0]), 2], 100.0)
    np.testing.assert_allclose(out["x"][keep][o], px, atol=10.0)
    np.testing.assert_allclose(out["y"][keep][o], py, atol=10.0)
