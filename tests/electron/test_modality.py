"""The modality declaration on the wire: codec round trip, bad input, predictor outputs."""

import math

import numpy as np
import pytest

from streamer.core import wire
from streamer.modalities.electron import MODALITY
from streamer.modalities.electron.predictor import make_predictor
from streamer.modalities.electron.metrics import isolated, match
from streamer.modalities.electron.model import BUNDLE_DIR
from streamer.modalities.electron.simulate import simulate_frames

HAVE_MODEL = (BUNDLE_DIR / "manifest.json").is_file()


def _packet(frames, **header):
    n, h, w = frames.shape
    raw = wire.encode_packet("electron", "frames", "s", 0, {"n": n, "height": h, "width": w, **header},
                             {"frames": frames}, spec=None)
    return wire.decode_packet(wire.unpack(raw), MODALITY)


def test_declaration_matches_design():
    kind = MODALITY.packet_kind("frames")
    assert [f.name for f in kind.fields] == ["height", "width", "pixel_um", "adu_per_e", "offset"]
    assert kind.field("pixel_um").default == 5.0 and kind.field("adu_per_e").default == 1.0
    assert kind.field("offset").default == 0.0
    arrays = {a.name: a for a in kind.arrays}
    assert arrays["frames"].dtypes == ("<u2", "<f4") and arrays["frames"].shape == ("n", "height", "width")
    assert arrays["frame_id"].dtypes == ("<i8",) and not arrays["frame_id"].required
    det = {a.name for a in MODALITY.results.detections}
    assert det == {"x", "y", "radius", "score", "charge", "size", "flags"}
    assert [a.name for a in MODALITY.results.items] == ["count"]
    assert MODALITY.default_predictor == "trees"
    assert {"trees", "centroid3x3"} <= {p.name for p in MODALITY.predictors}


def test_round_trip_u2_and_f4(lib):
    fr = simulate_frames(lib, 3, 32, 40, rate=3, seed=1)
    p = _packet(fr.frames, offset=100.0)
    assert p.arrays["frames"].shape == (3, 32, 40) and p.header["pixel_um"] == 5.0 and p.header["offset"] == 100.0
    p = _packet(fr.frames.astype("<f4"))
    assert p.arrays["frames"].dtype == np.dtype("<f4")


@pytest.mark.parametrize("case,reason", [("shape", "bad-size"), ("nan", "non-finite"), ("height", "bad-value"),
                                         ("zero", "bad-value")])
def test_bad_input_is_a_clear_error(case, reason):
    frames = np.zeros((2, 8, 8), "<f4")
    header = {"n": 2, "height": 8, "width": 8}
    if case == "shape":
        header["width"] = 9
    elif case == "nan":
        frames[1, 3, 3] = np.nan
    elif case == "height":
        header["height"] = -8
    elif case == "zero":
        header["adu_per_e"] = 0.0
    raw = wire.encode_packet("electron", "frames", "s", 0, header, {"frames": frames})
    with pytest.raises(wire.PacketError) as exc:
        wire.decode_packet(wire.unpack(raw), MODALITY)
    assert exc.value.reason in (reason, "negative")  # core may call a non-positive gain "negative"


def _check_outputs(out, n):
    m = len(out["item"])
    spec = {a.name: a for a in MODALITY.results.detections}
    for name, a in spec.items():
        assert out[name].shape == (m,), name
        assert out[name].dtype == a.dtype, name
    assert out["count"].shape == (n,) and out["count"].sum() == m
    assert out["item"].dtype == np.int32 and (np.diff(out["item"]) >= 0).all()


def test_baseline_predictor_outputs_encode(lib):
    fr = simulate_frames(lib, 20, 100, 100, rate=10, seed=2)
    p = _packet(fr.frames, offset=fr.offset)
    pred = make_predictor("centroid3x3")
    out = pred.predict(p)
    _check_outputs(out, 20)
    res = wire.decode_result(wire.encode_result(p, MODALITY.results, out, pred.model_id))
    assert res.m == len(out["x"]) and np.allclose(res.detections["x"], out["x"])


@pytest.mark.skipif(not HAVE_MODEL, reason="no trained electron bundle")
def test_trees_beat_centroid_and_cover(lib):
    fr = simulate_frames(lib, 300, 100, 100, rate=10, seed=3)
    p = _packet(fr.frames, offset=fr.offset)
    trees = make_predictor("trees")
    base = make_predictor("centroid3x3")
    out, ob = trees.predict(p), base.predict(p)
    _check_outputs(out, 300)
    iso = isolated(fr.truth_item, fr.truth_x, fr.truth_y)
    errs = {}
    for name, o in (("trees", out), ("base", ob)):
        m = match(o["item"], o["x"], o["y"], fr.truth_item, fr.truth_x, fr.truth_y)
        sel = np.nonzero(iso & (m >= 0))[0]
        errs[name] = np.hypot(o["x"][m[sel]] - fr.truth_x[sel], o["y"][m[sel]] - fr.truth_y[sel])
        if name == "trees":
            assert (m >= 0).mean() > 0.96
            cov = (errs[name] <= o["radius"][m[sel]]).mean()
            assert abs(cov - 0.9) < 0.03, cov
            assert np.allclose(o["score"], o["radius"])
    assert errs["trees"].mean() < 0.8 * errs["base"].mean()
    # the knob: the half with the smallest radius is more precise than the whole
    m = match(out["item"], out["x"], out["y"], fr.truth_item, fr.truth_x, fr.truth_y)
    sel = np.nonzero(iso & (m >= 0))[0]
    r = out["radius"][m[sel]]
    assert errs["trees"][r <= np.median(r)].mean() < 0.8 * errs["trees"].mean()


@pytest.mark.skipif(not HAVE_MODEL, reason="no trained electron bundle")
def test_compiled_matches_xgboost(lib):
    fr = simulate_frames(lib, 30, 100, 100, rate=10, seed=4)
    p = _packet(fr.frames, offset=fr.offset)
    a, b = make_predictor("trees").predict(p), make_predictor("trees-xgboost").predict(p)
    assert np.array_equal(a["item"], b["item"])
    assert np.allclose(a["x"], b["x"], atol=1e-4) and np.allclose(a["radius"], b["radius"], rtol=1e-4)


def test_flags_mark_edges_and_crowding():
    frames = np.zeros((1, 40, 40), np.float32)
    for r, c in ((1, 20), (20, 20), (20, 24)):  # one at the edge, two close together
        frames[0, r - 1:r + 2, c - 1:c + 2] = 60
        frames[0, r, c] = 300
    out = make_predictor("centroid3x3").predict(_packet(frames))
    assert len(out["x"]) == 3 or len(out["x"]) == 2  # the close pair may be merged by the detector
    names = {v: k for k, v in MODALITY.results.flags.items()}
    edge = (out["flags"] & names["edge"]) > 0  # declared flags are bit values
    assert edge[np.argmin(out["y"])]
    assert math.isnan(out["radius"][0])


@pytest.mark.parametrize("name", ["centroid3x3", pytest.param("trees", marks=pytest.mark.skipif(
    not HAVE_MODEL, reason="no trained electron bundle"))])
def test_degenerate_frames(name):
    """Empty, tiny, saturated and negative frames: declared outputs, no crash."""
    pred = make_predictor(name)
    for frames in (np.zeros((1, 5, 5), "<u2"), np.zeros((3, 1, 1), "<f4"), np.full((2, 30, 30), 65535, "<u2"),
                   np.full((2, 16, 16), -500.0, "<f4")):
        out = pred.predict(_packet(frames))
        _check_outputs(out, len(frames))
        assert out["count"].sum() <= len(frames)  # a flat frame is at most one (saturated) blob


@pytest.mark.skipif(not HAVE_MODEL, reason="no trained electron bundle")
def test_pair_stage_removes_second_counts(lib):
    """The shipped pair classifier: fewer second counts of one electron than the detection without a
    pair stage (its own cut: the lowest with <= max_false false detections on calibration frames, as
    the bundle's sweep recorded it), at no cost in efficiency (fresh events, never the training
    library's)."""
    from dataclasses import replace

    from streamer.modalities.electron.detect import detect
    from streamer.modalities.electron.metrics import double_counts
    from streamer.modalities.electron.model import TreeModel

    model = TreeModel()
    assert "merge" in model.backends and model.params.merge_p <= 1.0
    max_false = model.manifest["training"]["max_false"]
    ref = next(r for r in model.manifest["keep_sweep"] if r[1] > 1.0 and r[3] <= max_false)
    fr = simulate_frames(lib, 2000, 100, 100, rate=10, seed=11)
    res = {}
    for name, det in (("on", model.detect(fr.frames, fr.adu_per_e, fr.offset)),
                      ("off", detect(fr.frames, replace(model.params, merge_p=2.0, keep_p=ref[0]), fr.adu_per_e, fr.offset,
                                     keep_model=model.keep))):
        m = match(det.item, det.col, det.row, fr.truth_item, fr.truth_x, fr.truth_y)
        res[name] = ((m >= 0).mean(), double_counts(det.item, det.col, det.row, fr.truth_item, fr.truth_x,
                                                    fr.truth_y, m) / len(m))
    assert res["on"][1] < 0.6 * res["off"][1], res
    assert res["on"][0] > res["off"][0] - 0.002, res
    assert res["on"][0] > 0.98 and res["on"][1] < 0.006, res


@pytest.mark.skipif(not HAVE_MODEL, reason="no trained electron bundle")
def test_strict_merge_from_the_environment_counts_fewer_twice(lib, monkeypatch):
    """STREAMER_ELECTRON_MERGE_P: the user's counting trade. A strict cut on crowded frames leaves
    fewer second counts and fewer electrons found than the bundle's own; the model id says so; a value
    that is not a probability is a clear error."""
    from streamer.modalities.electron.metrics import double_counts
    from streamer.modalities.electron.predictor import MERGE_ENV

    fr = simulate_frames(lib, 4, 256, 256, rate=580.0, seed=12)  # the 576x576 occupancy
    pk = _packet(fr.frames, adu_per_e=fr.adu_per_e, offset=fr.offset)
    res = {}
    for tag, value in (("bundle", ""), ("strict", "0.01")):
        monkeypatch.setenv(MERGE_ENV, value)
        p = make_predictor("trees")
        out = p.predict(pk)
        m = match(out["item"], out["x"], out["y"], fr.truth_item, fr.truth_x, fr.truth_y)
        res[tag] = ((m >= 0).mean(), double_counts(out["item"], out["x"], out["y"], fr.truth_item, fr.truth_x,
                                                   fr.truth_y, m), p.model_id)
    assert res["strict"][1] < res["bundle"][1], res
    assert res["strict"][0] < res["bundle"][0], res
    assert res["strict"][2].endswith("+merge0.01") and "+merge" not in res["bundle"][2]
    for bad in ("high", "1.5", "-0.1"):
        monkeypatch.setenv(MERGE_ENV, bad)
        with pytest.raises(ValueError, match="between 0 and 1"):
            make_predictor("trees")


def test_held_out_pool_refuses_a_library_the_bundle_saw():
    """The evaluation's extra test libraries must be fresh: a seed used for training or calibration
    (or the base library's own) is refused before anything is simulated; the shipped bundle's pool
    is disjoint from its training seeds."""
    from streamer.modalities.electron.evaluate import TEST_EXTRA, held_out_pool, training_seeds
    from streamer.modalities.electron.model import load_bundle

    manifest = {"training": {"library_seed": 0, "extra_train": [[101, 40000]], "extra_cal": [[103, 40000]]}}
    assert training_seeds(manifest) == {0, 101, 103}
    for seed in (101, 103, 0):
        with pytest.raises(ValueError, match="used in training or calibration"):
            held_out_pool(manifest, extra=((seed, 10),))
    assert not {sd for sd, _ in TEST_EXTRA} & training_seeds(load_bundle())


def test_held_out_pool_simulates_the_bundles_instrument(tmp_path, monkeypatch):
    """An instrument profile's bundle is evaluated on events of its own sensor: the pool's libraries
    carry the manifest's event physics, and its base test split is that library's."""
    from streamer.modalities.electron.evaluate import held_out_pool
    from streamer.modalities.electron.model import library_splits

    monkeypatch.setenv("STREAMER_CACHE", str(tmp_path))
    manifest = {"training": {"library_n": 200, "library_seed": 5, "physics": {"pixel_um": 6.5, "energy_kev": 200.0}}}
    lib, idx = held_out_pool(manifest, extra=((8, 50),))
    assert lib.physics["pixel_um"] == 6.5 and lib.physics["energy_kev"] == 200.0
    assert len(lib) == 250
    assert np.array_equal(idx[:-50], library_splits(200, 5)["test"]) and np.array_equal(idx[-50:], np.arange(200, 250))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_live_path_reads_features_from_the_frames_bitwise_as_from_windows(lib, dtype):
    """The predictor's live path (no window array, features read from the raw frames) gives exactly
    what gathering the windows first gives, at the frame edges too; ADU with gain and offset."""
    from streamer.core.modality import Packet
    from streamer.modalities.electron.fast import HAVE_NUMBA
    from streamer.modalities.electron.features import edge_distances, features, features_at

    fr = simulate_frames(lib, 40, 64, 64, rate=12.0, seed=11, adu_per_e=2.5, offset=400.0)
    frames = fr.frames.astype(dtype)
    p = make_predictor("trees")
    det = p.model.detect(frames, fr.adu_per_e, fr.offset)  # with windows
    assert (det.row < 6).any() and (det.col > 57).any()  # peaks within a window of the edge
    ed = edge_distances(det.row, det.col, 64, 64, p.params.window_r)
    a = features(det.window, p.params.threshold_e, ed)
    b = features_at(frames, det.item, det.row, det.col, p.params.window_r, fr.adu_per_e, fr.offset,
                    p.params.threshold_e, ed)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    lean = p.model.detect(frames, fr.adu_per_e, fr.offset, windows=False)
    assert (lean.window is None) == HAVE_NUMBA
    ref = p.model.predict_all(det, frames.shape)
    out = p.predict(Packet("s", 0, 0.0, "electron", "frames", 40, {"n": 40, "height": 64, "width": 64,
                                                                      "adu_per_e": fr.adu_per_e, "offset": fr.offset},
                           {"frames": frames}))
    np.testing.assert_array_equal(out["x"], (det.col + ref["dx"]).astype(np.float32))
    np.testing.assert_array_equal(out["radius"], ref["radius"])
    np.testing.assert_array_equal(out["charge"], ref["charge"])
