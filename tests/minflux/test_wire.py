"""MINFLUX on the wire (v2, and v1 without ``modality``): round trips, zero-copy decode, one test per reason."""

import math

import msgpack
import numpy as np
import pytest

from streamer.core import registry, wire
from streamer.core.wire import PacketError
from streamer.modalities.minflux import MODALITY, RESULTS, TuplePredictor
from streamer.modalities.minflux import wire as schema
from streamer.modalities.minflux.simulate import simulate


@pytest.fixture(scope="module")
def batch():
    return simulate("dynamic", 2, 50, seed=3).tuples[:40]


def fields(batch, **over):
    """A valid packet as a dict, with overrides (None removes a key)."""
    msg = msgpack.unpackb(schema.encode_batch("scope", 7, batch), raw=False)
    for k, v in over.items():
        if v is None:
            msg.pop(k, None)
        else:
            msg[k] = v
    return msgpack.packb(msg, use_bin_type=True)


def reason(raw, **kw):
    with pytest.raises(PacketError) as exc:
        schema.decode_packet(raw, **kw)
    return exc.value.reason


def test_roundtrip_is_exact_and_zero_copy(batch):
    raw = schema.encode_batch("scope", 7, batch, t_acq=123.5)
    p = schema.decode_packet(raw)
    assert (p.stream, p.seq, p.t_acq, len(p.batch)) == ("scope", 7, 123.5, 40)
    np.testing.assert_array_equal(p.batch.counts, batch.counts)
    np.testing.assert_array_equal(p.batch.positions, batch.positions)
    np.testing.assert_array_equal(p.batch.trace_id, batch.trace_id)
    np.testing.assert_array_equal(p.batch.time_s, batch.time_s)
    assert p.has_time and p.has_trace_id
    # views on the bytes msgpack produced, not copies
    assert isinstance(p.batch.counts.base, bytes) or isinstance(p.batch.counts.base.base, bytes)
    assert not p.batch.counts.flags.writeable


def test_little_endian_layout_is_what_the_readme_says(batch):
    msg = msgpack.unpackb(schema.encode_batch("s", 0, batch), raw=False)
    assert msg["v"] == 2 and msg["kind"] == "tuples" and msg["modality"] == "minflux" and msg["n"] == 40
    c = np.frombuffer(msg["counts"], "<u2").reshape(40, 2, 3)
    np.testing.assert_array_equal(c, batch.counts)
    assert len(msg["positions"]) == 40 * 6 * 4 and len(msg["time"]) == 40 * 8


def test_centre_plus_half_l_expands_to_positions(batch):
    raw = schema.encode_packet("s", 0, batch.counts, centre=batch.centre, half_l=15.0)
    p = schema.decode_packet(raw)
    np.testing.assert_allclose(p.batch.positions, batch.positions, atol=1e-3)
    assert not p.has_time and np.isnan(p.batch.time_s).all() and (p.batch.trace_id == -1).all()


def test_unknown_keys_are_ignored(batch):
    assert schema.decode_packet(fields(batch, future_key="x")).seq == 7


def test_v1_packets_without_modality_mean_minflux(batch):
    raw = fields(batch, v=1, modality=None)
    p = schema.decode_packet(raw)
    assert (p.seq, len(p.batch)) == (7, 40)
    assert wire.envelope(msgpack.unpackb(raw)).modality == "minflux"
    assert reason(fields(batch, modality=None)) == "missing-key"  # v2 must name its modality


@pytest.mark.parametrize("raw_or_over, expected", [
    (b"\xc1garbage", "not-msgpack"),
    (msgpack.packb([1, 2, 3]), "not-a-map"),
    ({"v": 3}, "unknown-version"),
    ({"v": None}, "unknown-version"),
    ({"kind": "other"}, "unknown-kind"),
    ({"seq": None}, "missing-key"),
    ({"counts": None}, "missing-key"),
    ({"positions": None}, "missing-key"),
    ({"seq": "7"}, "bad-type"),
    ({"n": 41}, "bad-size"),
    ({"n": 0}, "empty"),
    ({"seq": -1}, "negative"),
    ({"t_acq": -5.0}, "negative"),
    ({"t_acq": math.nan}, "non-finite"),
    ({"stream": "x" * 65}, "bad-type"),
    ({"centre": b"\0" * 40 * 8}, "ambiguous-positions"),
])
def test_rejections_have_reasons(batch, raw_or_over, expected):
    raw = fields(batch, **raw_or_over) if isinstance(raw_or_over, dict) else raw_or_over
    assert reason(raw) == expected
    assert expected in registry.reason_table()


def test_array_content_rejections(batch):
    pos = batch.positions.copy()
    pos[3, 1, 2] = np.nan  # one bad tuple is flagged, the packet kept
    p = schema.decode_packet(schema.encode_packet("s", 0, batch.counts, pos))
    assert p.invalid.tolist() == [i == 3 for i in range(40)]
    pos[:] = np.inf  # nothing valid left: rejected
    assert reason(schema.encode_packet("s", 0, batch.counts, pos)) == "non-finite"
    pos = batch.positions.copy()
    pos[5, 0, [0, 2]] = pos[5, 0, [2, 0]]  # swapped exposures
    assert reason(schema.encode_packet("s", 0, batch.counts, pos)) == "non-increasing-positions"
    assert reason(schema.encode_packet("s", 0, batch.counts, centre=batch.centre, half_l=-15)) == "negative"
    t = batch.time_s.copy()
    t[10] = t[9] - 1e-4
    assert reason(schema.encode_packet("s", 0, batch.counts, batch.positions, time_s=t)) == "non-monotonic-time"
    tid = batch.trace_id.copy()
    tid[10:] += 1  # a new trace may start at an earlier time
    assert schema.decode_packet(schema.encode_packet("s", 0, batch.counts, batch.positions, time_s=t, trace_id=tid))
    t[10] = np.inf
    assert schema.decode_packet(schema.encode_packet("s", 0, batch.counts, batch.positions, time_s=t)).invalid[10]
    # float counts have the wrong byte length: dtype errors are size errors by construction
    raw = fields(batch, counts=batch.counts.astype("<f4").tobytes())
    assert reason(raw) == "bad-size"


def test_oversized(batch):
    assert reason(schema.encode_batch("s", 0, batch), max_tuples=39) == "oversized"
    assert schema.decode_packet(schema.encode_batch("s", 0, batch), max_tuples=40).seq == 0
    with pytest.raises(PacketError) as exc:
        wire.unpack(b"\0" * (wire.MAX_PACKET_BYTES + 1))
    assert exc.value.reason == "oversized"


def test_result_error_stats_messages(batch):
    p = wire.decode_packet(wire.unpack(schema.encode_batch("scope", 3, batch, t_acq=10.0)), MODALITY)
    predictor = TuplePredictor("closed-form")
    pred = predictor.predict(p)
    res = wire.decode_result(wire.encode_result(p, RESULTS, pred, predictor.model_id, t_done=11.0))
    assert (res.modality, res.stream, res.seq, res.n, res.t_acq, res.t_done, res.model) == (
        "minflux", "scope", 3, 40, 10.0, 11.0, predictor.model_id)
    np.testing.assert_array_equal(res.distance, pred["distance"])
    np.testing.assert_array_equal(res.flags, pred["flags"])
    np.testing.assert_array_equal(res.photons, batch.photons)
    np.testing.assert_array_equal(res.centre, batch.centre)
    np.testing.assert_array_equal(res.time, batch.time_s)
    msg = wire.decode_message(wire.encode_result(p, RESULTS, pred, predictor.model_id))
    assert msg["kind"] == "result" and msg["distance"].dtype == np.float32 and msg["upper"].shape == (40,)
    err = wire.decode_message(wire.encode_error("bad-size", "counts", stream="s", seq=4, source="w1"))
    assert (err["kind"], err["reason"], err["seq"], err["source"]) == ("error", "bad-size", 4, "w1")
    st = wire.decode_message(wire.encode_stats({"tuples": 5, "latency_ms": {"p99": 1.0}}))
    assert st["kind"] == "stats" and st["tuples"] == 5 and st["latency_ms"]["p99"] == 1.0


def test_end_marker(batch):
    msg = wire.unpack(wire.encode_end("scope", 12, "minflux"))
    assert msg["kind"] == "end" and wire.header(msg) == ("scope", 12)
    assert reason(wire.encode_end("scope", 12, "minflux")) == "unknown-kind"  # not a tuples packet


def test_flagged_tuples_come_back_nan_with_the_invalid_flag_and_count(batch):
    pos = batch.positions.copy()
    pos[[2, 7]] = np.nan
    p = wire.decode_packet(wire.unpack(schema.encode_packet("s", 1, batch.counts, pos)), MODALITY)
    predictor = TuplePredictor("closed-form")
    res = wire.decode_result(wire.encode_result(p, RESULTS, predictor.predict(p), predictor.model_id))
    assert np.isnan(res.distance[[2, 7]]).all() and np.isfinite(np.delete(res.distance, [2, 7])).all()
    assert (res.flags[[2, 7]] & RESULTS.invalid_flag).all() and not (np.delete(res.flags, [2, 7]) & 16).any()
    assert res.invalid == {"non-finite": 2}


def test_predictor_returning_undeclared_shapes_is_an_error(batch):
    p = wire.decode_packet(wire.unpack(schema.encode_batch("scope", 3, batch)), MODALITY)
    out = TuplePredictor("closed-form").predict(p)
    with pytest.raises(ValueError, match="distance"):
        wire.encode_result(p, RESULTS, {**out, "distance": out["distance"][:-1]}, "m")
    with pytest.raises(ValueError, match="did not return"):
        wire.encode_result(p, RESULTS, {k: v for k, v in out.items() if k != "flags"}, "m")
