"""Declaration, codec round trip and bad-input errors; baseline predictors return the declared arrays."""

import numpy as np
import pytest

from streamer.core import wire
from streamer.modalities.diffusion import MODALITY, STACKS
from streamer.modalities.diffusion.physics import Optics, simulate


def _stacks(n=3, t=16, size=32, seed=0):
    op = Optics(frames=t, height=size, width=size)
    rng = np.random.default_rng(seed)
    return simulate(rng, np.full(n, 0.5), np.full(n, 2000.0), np.full(n, 1.0), op), op


def _header(stacks, **kw):
    n, t, h, w = stacks.shape
    return {"n": n, "frames": t, "height": h, "width": w, "frame_s": 0.01, "baseline": 100.0,
            "adu_per_photon": 2.0, **kw}


def _decode(header, stacks):
    raw = wire.encode_packet("diffusion", "stacks", "s", 0, header, {"stacks": stacks}, spec=STACKS)
    return wire.decode_packet(wire.unpack(raw), MODALITY)


def test_declared_keys():
    names = [f.name for f in STACKS.fields]
    assert names == ["frames", "height", "width", "pixel_nm", "frame_s", "exposure_s", "baseline", "adu_per_photon"]
    assert STACKS.field("frame_s").required and STACKS.field("pixel_nm").default == 200.0
    assert STACKS.field("baseline").default == 0.0 and STACKS.field("adu_per_photon").default == 1.0
    assert STACKS.arrays[0].name == "stacks" and STACKS.arrays[0].dtypes == ("<u2",)
    assert [a.name for a in MODALITY.results.items] == ["D", "D_lo", "D_hi", "photons", "flags"]
    assert {p.name for p in MODALITY.predictors} >= {"trees", "msd", "cve"}
    assert MODALITY.default_predictor == "trees"


def test_round_trip_defaults():
    b, _ = _stacks()
    pk = _decode(_header(b.stacks), b.stacks)
    assert pk.n == 3 and pk.arrays["stacks"].shape == (3, 16, 32, 32)
    assert pk.header["exposure_s"] == 0.01  # default = frame_s
    assert pk.header["pixel_nm"] == 200.0
    assert np.array_equal(pk.arrays["stacks"], b.stacks)


@pytest.mark.parametrize("change,reason", [
    (dict(frames=15), "bad-size"),  # wrong stack shape for the bytes sent
    (dict(frames=1), "bad-value"),  # D needs 2 frames: the declared minimum
    (dict(height=30), "bad-size"),
    (dict(frame_s=float("nan")), "non-finite"),
    (dict(frame_s=-0.01), ("bad-value", "negative")),  # core's reason for a non-positive field
    (dict(exposure_s=0.02), "bad-value"),  # exposure longer than the frame period
    (dict(adu_per_photon=0.0), ("bad-value", "negative")),
])
def test_bad_input_is_a_clear_error(change, reason):
    b, _ = _stacks()
    with pytest.raises(wire.PacketError) as e:
        _decode(_header(b.stacks, **change), b.stacks)
    assert e.value.reason in (reason if isinstance(reason, tuple) else (reason,)) and e.value.detail


def test_single_frame_and_missing_frame_s():
    b, _ = _stacks(t=1)
    with pytest.raises(wire.PacketError) as e:
        _decode(_header(b.stacks), b.stacks)
    assert e.value.reason == "bad-value" and "frames" in str(e.value)
    b, _ = _stacks()
    h = _header(b.stacks)
    del h["frame_s"]
    with pytest.raises(wire.PacketError) as e:
        _decode(h, b.stacks)
    assert e.value.reason == "missing-key"


@pytest.mark.parametrize("name", ["msd", "cve"])
def test_baselines_return_declared_arrays(name):
    b, _ = _stacks(n=4)
    pk = _decode(_header(b.stacks), b.stacks)
    pred = MODALITY.predictor(name).factory()
    out = pred.predict(pk)
    raw = wire.encode_result(pk, MODALITY.results, out, pred.model_id)
    res = wire.decode_result(raw)
    assert res.n == 4 and res.D.dtype == np.float32 and res.flags.dtype == np.uint8
    assert (res.D_lo <= res.D).all() and (res.D <= res.D_hi).all()
    assert np.all(np.abs(res.photons - 2000) < 200)


def test_view_ingest_is_bounded():
    view = MODALITY.view(capacity=5)
    res = {"D": np.array([0.1, 1.0, 10.0], np.float32), "D_lo": np.array([0.05, 0.5, 5], np.float32),
           "D_hi": np.array([0.2, 2, 20], np.float32), "t_acq": 3.0}
    view.ingest([res, {**res, "t_acq": 4.0}])
    assert len(view.d) == 5 and view.hist.sum() == 6
    assert view.t[-1] == 1.0  # seconds since the first result
