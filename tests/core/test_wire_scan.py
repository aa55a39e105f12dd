"""The in-place envelope scanner agrees with msgpack on every message it accepts."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from streamer.core import wire


def _messages():
    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, wire.SCAN_MIN_BYTES + 10, dtype=np.uint8).tobytes()
    yield {"v": 2, "kind": "frames", "stream": "s", "seq": 7, "n": 3, "frames": big, "t_acq": 1.5}
    yield {"v": 2, "kind": "k", "stream": "é" * 40, "seq": 2**40, "neg": -5, "small": -100, "f": -2.5e300,
           "t": True, "no": None, "x": big, "empty": b""}
    yield {"v": 1, "kind": "tuples", "stream": "s", "seq": 0, "nested": [1, 2], "pad": big}  # falls back


@pytest.mark.parametrize("msg", list(_messages()))
def test_scan_of_large_messages_equals_unpack(msg):
    raw = msgpack.packb(msg, use_bin_type=True)
    assert len(raw) >= wire.SCAN_MIN_BYTES
    got = wire.scan(raw)
    want = wire.unpack(raw)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert (bytes(got[k]) if isinstance(got[k], memoryview) else got[k]) == v
    if "frames" in msg:  # zero copy: a view into the received buffer
        assert isinstance(got["frames"], memoryview) and got["frames"].obj is raw


@pytest.mark.parametrize("cut", [1, 7, 1000, -1])
def test_truncated_large_message_is_a_packet_error(cut):
    raw = msgpack.packb(next(_messages()), use_bin_type=True)
    with pytest.raises(wire.PacketError) as exc:
        wire.scan(raw[:cut] if cut > 0 else raw + b"\x00")
    assert exc.value.reason in ("not-msgpack", "unknown-version")


def test_small_messages_take_msgpack_path_with_the_same_result():
    raw = msgpack.packb({"v": 2, "kind": "k", "stream": "s", "seq": 1, "a": b"\x01\x02"}, use_bin_type=True)
    assert len(raw) < wire.SCAN_MIN_BYTES
    assert wire.scan(raw) == wire.unpack(raw)
    with pytest.raises(wire.PacketError):
        wire.scan(raw[:-1])


def test_optional_detection_table_may_be_absent_empty_or_multidimensional():
    """A modality whose detection arrays are all optional: a predictor may return none of them (no
    ``m``), an empty table, or rows with a tail shape; a required one must come with ``item``."""
    from streamer.core.modality import ArraySpec, Packet, ResultSpec

    spec = ResultSpec(items=(ArraySpec("val", "<f4", ("n",)),),
                      detections=(ArraySpec("s", "<f8", ("m", 2, 4), required=False),))
    packet = Packet("s", 0, 0.0, "toy", "k", 3, {}, {})
    v = np.arange(3, dtype=np.float32)
    none = wire.decode_result(wire.encode_result(packet, spec, {"val": v}, "m"))
    assert none.m is None and none.detections == {} and np.array_equal(none.items["val"], v)
    empty = wire.decode_result(wire.encode_result(packet, spec, {"val": v, "item": np.zeros(0, np.int32),
                                                                 "s": np.zeros((0, 2, 4))}, "m"))
    assert empty.m == 0 and empty.detections["s"].shape == (0, 2, 4)
    rows = np.arange(16, dtype=np.float64).reshape(2, 2, 4)
    full = wire.decode_result(wire.encode_result(packet, spec, {"val": v, "item": np.array([0, 2], np.int32),
                                                                "s": rows}, "m"))
    assert full.m == 2 and np.array_equal(full.detections["s"], rows)
    required = ResultSpec(items=spec.items, detections=(ArraySpec("s", "<f8", ("m", 2, 4)),))
    with pytest.raises(ValueError, match="without 'item'"):
        wire.encode_result(packet, required, {"val": v}, "m")
