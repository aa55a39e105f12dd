"""smlm3d declaration, predictors (shapes, dtypes, accuracy on a small packet), commands and view model."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from streamer.core.modality import Packet
from streamer.modalities.smlm3d import MODALITY
from streamer.modalities.smlm3d.localize import REJECTED
from streamer.modalities.smlm3d.metrics import assess
from streamer.modalities.smlm3d.simulate import SimConfig, simulate_frames


@pytest.fixture(scope="module")
def sim():
    return simulate_frames(SimConfig(n_frames=60, photons=5000, background=50, density=1.0, sampling="csr", seed=4))


def _packet(frames, **header) -> Packet:
    h = {"height": frames.shape[1], "width": frames.shape[2], "pixel_nm": 100.0, "baseline": 100.0,
         "adu_per_photon": 1.0, **header}
    fr = frames.copy()
    fr.flags.writeable = False
    return Packet("s", 0, 0.0, "smlm3d", "frames", len(frames), h, {"frames": fr})


def test_declaration_matches_design_wire_keys():
    kind = MODALITY.packet_kind("frames")
    assert [a.name for a in kind.arrays] == ["frames", "frame_id"]
    assert kind.arrays[0].dtypes == ("<u2",) and kind.arrays[0].shape == ("n", "height", "width")
    assert kind.arrays[1].dtypes == ("<i8",) and not kind.arrays[1].required
    defaults = {f.name: f.default for f in kind.fields}
    assert defaults["pixel_nm"] == 100 and defaults["baseline"] == 100 and defaults["adu_per_photon"] == 1.0
    det = [a.name for a in MODALITY.results.detections]
    assert det == ["x", "y", "z", "photons", "background", "x_lo", "x_hi", "y_lo", "y_hi", "z_lo", "z_hi",
                   "score", "flags"]
    assert [a.name for a in MODALITY.results.items] == ["count"]
    assert {p.name for p in MODALITY.predictors} >= {"mle", "trees", "trees-csr"}
    assert MODALITY.default_predictor == "trees"


@pytest.mark.parametrize("name", ["mle", "trees-xgboost"])
def test_predictor_outputs_declared_arrays(sim, name):
    frames, truth = sim
    pred = MODALITY.predictor(name).factory()
    out = pred.predict(_packet(frames))
    decl = {a.name: a for a in MODALITY.results.detections}
    m = len(out["item"])
    assert out["item"].dtype == np.int32 and m > 0
    for k, a in decl.items():
        assert out[k].dtype == np.dtype(a.dtypes[0]) and out[k].shape == (m,), k
    assert out["count"].dtype == np.int32 and out["count"].shape == (len(frames),)
    keep = (out["flags"] & REJECTED) == 0
    assert out["count"].sum() == keep.sum()
    assert np.all(out["x_lo"] <= out["x"]) and np.all(out["x"] <= out["x_hi"])
    a = assess(out["item"][keep], np.column_stack([out["x"], out["y"], out["z"]])[keep].astype(float),
               truth["item"], np.column_stack([truth["x"], truth["y"], truth["z"]]))
    assert a["ji"] > 90 and a["rmse_lat"] < 15 and a["rmse_ax"] < 50


def test_camera_header_is_used(sim):
    """Frames in other ADU scaling give the same localizations when the header says so."""
    frames, _ = sim
    pred = MODALITY.predictor("mle").factory()
    ref = pred.predict(_packet(frames))
    scaled = (np.round((frames.astype(float) - 100) * 2 + 500)).clip(0, 65535).astype(np.uint16)
    out = pred.predict(_packet(scaled, baseline=500.0, adu_per_photon=2.0))
    assert len(out["x"]) == len(ref["x"])
    assert np.median(np.abs(out["x"] - ref["x"])) < 1.0


def test_compiled_matches_xgboost(sim):
    from streamer.modalities.smlm3d.predictors import TreesPredictor

    frames, _ = sim
    a = TreesPredictor("trees-structure", kind="compiled").predict_frames(frames[:20])
    b = TreesPredictor("trees-structure", kind="xgboost").predict_frames(frames[:20])
    for k in ("x", "y", "z", "z_lo", "score"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-2)


def test_empty_frames_give_no_detections():
    frames = np.random.default_rng(0).poisson(50, (3, 64, 64)).astype(np.uint16) + 100
    out = MODALITY.predictor("mle").factory().predict(_packet(frames))
    assert out["count"].tolist() == [0, 0, 0]


def test_simulate_and_report_roundtrip(tmp_path):
    cmds = MODALITY.commands
    p = argparse.ArgumentParser()
    cmds.add_simulate_arguments(p)
    args = p.parse_args(["--frames", "40", "--density", "1", "--snr", "20k/200", "--sampling", "csr"])
    rec = cmds.simulate(args)
    rec.save(tmp_path / "r.npz")
    from streamer.core.recording import load_recording

    rec = load_recording(tmp_path / "r.npz")
    assert rec.arrays["frames"].shape == (40, 64, 64) and rec.header["pixel_nm"] == 100.0
    pred = MODALITY.predictor("mle").factory()
    # two packets of 20 frames, as replay would cut them; results flattened like the sink's store
    res: dict[str, list] = {}
    for seq in range(2):
        out = pred.predict_frames(rec.arrays["frames"][seq * 20:(seq + 1) * 20])
        res.setdefault("seq", []).append(np.full(20, seq))
        res.setdefault("row", []).append(np.arange(20))
        res.setdefault("count", []).append(out["count"])
        m = len(out["item"])
        res.setdefault("det_seq", []).append(np.full(m, seq))
        for k, v in out.items():
            if k != "count":
                res.setdefault("det_" + k, []).append(v)
    res = {k: np.concatenate(v) for k, v in res.items()}
    text, ok = cmds.report(rec, res, argparse.Namespace(packet_size=20))
    assert ok and "every frame exactly once" in text
    ji = float(text.split("JI ")[1].split(" ")[0])
    assert ji > 90


def test_render_model_accumulates_kept_only():
    from streamer.modalities.smlm3d.view import RenderModel

    m = RenderModel(field_nm=1000, render_nm=100)
    m.ingest([{"n": 2, "x": np.array([50.0, 150, 950]), "y": np.array([50.0, 50, 950]),
               "z": np.array([-700.0, 700, 0]), "flags": np.array([0, REJECTED, 0], np.uint8)}])
    assert m.total == 2 and m.count[0, 0] == 1 and m.count[9, 9] == 1 and m.count[0, 1] == 0
    img = m.rgb()
    assert img.shape == (10, 10, 3)
    assert img[0, 0, 2] > img[0, 0, 0]  # z = -700: blue


def test_thunderstorm_csv_roundtrip(tmp_path, sim):
    from streamer.modalities.smlm3d.loaders import read_thunderstorm_csv, write_thunderstorm_csv

    frames, _ = sim
    out = MODALITY.predictor("mle").factory().predict_frames(frames[:20])
    n = write_thunderstorm_csv(tmp_path / "loc.csv", out)
    keep = (out["flags"] & REJECTED) == 0
    assert n == keep.sum()
    back = read_thunderstorm_csv(tmp_path / "loc.csv")
    assert sorted(back["item"].tolist()) == sorted(out["item"][keep].tolist())
    np.testing.assert_allclose(np.sort(back["z"]), np.sort(out["z"][keep].astype(float)), rtol=1e-6)
    assert np.all(back["uncertainty"] > 0)
    assert (tmp_path / "loc.csv").read_text().startswith('"id","frame","x [nm]","y [nm]","z [nm]"')


def test_wire_roundtrip_through_core_codec(sim):
    """encode_packet -> decode_packet (declaration + validate) -> predictor -> encode/decode_result."""
    wire = pytest.importorskip("streamer.core.wire")
    frames, _ = sim
    kind = MODALITY.packet_kind("frames")
    raw = wire.encode_packet("smlm3d", "frames", "cam", 3, {"n": 8, "height": 64, "width": 64},
                             {"frames": frames[:8], "frame_id": np.arange(8, dtype=np.int64)}, kind)
    pkt = wire.decode_packet(wire.unpack(raw), MODALITY)
    assert pkt.header["pixel_nm"] == 100.0 and pkt.arrays["frames"].shape == (8, 64, 64)
    pred = MODALITY.predictor("mle").factory()
    res = wire.decode_result(wire.encode_result(pkt, MODALITY.results, pred.predict(pkt), pred.model_id))
    assert res.seq == 3 and res.n == 8 and res.m == len(res.detections["x"])
    assert res.items["count"].shape == (8,)
    # a malformed packet is rejected with a reason, not a crash
    bad = wire.unpack(raw)
    bad["frames"] = bytes(bad["frames"])[:-2]
    with pytest.raises(wire.PacketError):
        wire.decode_packet(bad, MODALITY)
