"""Wire schema v1: msgpack maps carrying batches of tuples and their results as raw arrays.

Every message is ONE msgpack map with string keys. Arrays travel as msgpack ``bin`` holding the
raw little-endian bytes of a C-ordered array whose dtype and shape are fixed by the key (no dtype
on the wire: a sender that gets a dtype wrong is caught by the byte-length check). Receivers view
them with ``numpy.frombuffer`` (no copy after msgpack's own). Unknown keys are ignored so that
minor additions never break old receivers; a change of meaning bumps ``v``.

Message kinds (``"kind"``):
* ``tuples`` -- publisher -> sink ingest: one packet of n tuples (:func:`encode_packet`).
* ``end``    -- publisher -> sink ingest: the stream is finished after ``seq`` packets.
* ``result`` -- sink PUB topic ``result``: per-tuple distance, interval, flags (:func:`encode_result`).
* ``stats``  -- sink PUB topic ``stats``: periodic rates, latency, gaps, duplicates, rejects.
* ``error``  -- sink PUB topic ``error``: one rejected packet and the reason (:data:`REASONS`).

The README section "Streaming pipeline and wire protocol" is the normative description.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from .physics import HALF_L_NM, beam_positions
from .predictor import Prediction
from .tuples import TupleBatch

VERSION = 1
#: packets with more tuples than this are rejected as ``oversized`` (a sink option can lower it)
MAX_TUPLES = 1 << 20
#: raw packets larger than this are rejected as ``oversized`` before decoding
MAX_PACKET_BYTES = 64 << 20
MAX_STREAM_ID = 64  # characters

# fixed per-key array layout: key -> (little-endian dtype, per-tuple shape)
PACKET_ARRAYS: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "counts": (np.dtype("<u2"), (2, 3)),
    "positions": (np.dtype("<f4"), (2, 3)),
    "centre": (np.dtype("<f4"), (2,)),
    "trace_id": (np.dtype("<i8"), ()),
    "time": (np.dtype("<f8"), ()),
}
RESULT_ARRAYS: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "distance": (np.dtype("<f4"), ()),
    "lower": (np.dtype("<f4"), ()),
    "upper": (np.dtype("<f4"), ()),
    "flags": (np.dtype("u1"), ()),
    "photons": (np.dtype("<u4"), ()),
    "centre": (np.dtype("<f4"), (2,)),
    "trace_id": (np.dtype("<i8"), ()),
    "time": (np.dtype("<f8"), ()),
}

#: PUB topics of the sink (first frame of each multipart message)
TOPIC_RESULT, TOPIC_STATS, TOPIC_ERROR = b"result", b"stats", b"error"

#: rejection reason code -> meaning (the ``reason`` of an error message)
REASONS: dict[str, str] = {
    "not-msgpack": "payload is not valid msgpack",
    "not-a-map": "payload is not a msgpack map with string keys",
    "unknown-version": "'v' is missing or not a schema version this receiver implements",
    "unknown-kind": "'kind' is not 'tuples' or 'end'",
    "missing-key": "a required key is absent",
    "bad-type": "a key has the wrong msgpack type (e.g. str where int expected)",
    "bad-size": "an array's byte length is not n * itemsize * per-tuple size",
    "oversized": "n or the raw packet exceeds the receiver's limit",
    "empty": "n < 1",
    "ambiguous-positions": "both 'positions' and 'centre' given",
    "non-finite": "NaN or inf in positions, centre, half_l, time or t_acq",
    "negative": "a value that cannot be negative is (seq, t_acq, half_l <= 0, time)",
    "non-increasing-positions": "beam positions of an axis not strictly increasing (c-L/2 < c < c+L/2)",
    "non-monotonic-time": "per-tuple 'time' decreases between consecutive tuples of the same trace",
    "redelivery-limit": "the packet was re-sent to workers too often (it kills them); dropped",
    "worker-error": "the predictor raised on a packet that passed validation",
}


#: keys of a ``stats`` message (besides v/kind/t) -> meaning; cumulative unless noted
STATS_FIELDS: dict[str, str] = {
    "uptime_s": "seconds since the sink started",
    "packets": "result packets released to the output (after dedupe)",
    "tuples": "tuples released to the output",
    "rate_tuples_s": "tuples/s over the last stats interval",
    "mean_rate_tuples_s": "tuples/s from the first to the last released packet",
    "latency_ms": "{p50, p90, p99, max, n} of t_sink - t_acq per packet in ms: over the last interval, "
                  "over the whole run (plus p99.9) when final",
    "gaps": "seqs never seen in a readable packet: skipped, missing at the end marker, or rejected "
            "before their header could be read",
    "late": "packets that arrived after a later seq and filled a gap (released, gap count decreased)",
    "duplicates": "packets whose (stream, seq) was already received (dropped, never processed twice)",
    "rejected": "packets rejected (not in the output)",
    "rejected_tuples": "tuples in rejected packets whose n was readable",
    "rejected_by_reason": "{reason: packets}",
    "resent": "re-dispatches of a packet to another worker (worker died, left or timed out)",
    "redundant_answers": "second answers for an already answered packet (ignored)",
    "workers_lost": "workers dropped (dead, silent past the heartbeat timeout, or said BYE)",
    "workers": "workers seen alive within the heartbeat timeout",
    "in_flight": "packets dispatched to workers and not yet answered",
    "queued": "packets received and waiting for a worker",
    "streams": "{stream: {next_seq, ended}}",
    "final": "true on the last stats message of a sink run",
}


class PacketError(ValueError):
    """A packet that fails validation; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Packet:
    """A decoded, validated ``tuples`` packet."""

    stream: str
    seq: int
    t_acq: float
    batch: TupleBatch
    has_time: bool
    has_trace_id: bool


# --------------------------------------------------------------------------- encoding


def _raw(arr: np.ndarray, dtype: np.dtype) -> bytes:
    return np.ascontiguousarray(arr, dtype=dtype).tobytes()


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def encode_packet(
    stream: str,
    seq: int,
    counts: np.ndarray,
    positions: np.ndarray | None = None,
    *,
    centre: np.ndarray | None = None,
    half_l: float = HALF_L_NM,
    trace_id: np.ndarray | None = None,
    time_s: np.ndarray | None = None,
    t_acq: float | None = None,
) -> bytes:
    """One ``tuples`` packet. Give either full ``positions`` (n,2,3) or ``centre`` (n,2) + ``half_l``.

    ``t_acq`` defaults to now (Unix seconds): the sink measures latency from it.
    """
    counts = np.asarray(counts)
    n = len(counts)
    msg: dict[str, Any] = {
        "v": VERSION, "kind": "tuples", "stream": stream, "seq": int(seq),
        "t_acq": float(time.time() if t_acq is None else t_acq), "n": n,
        "counts": _raw(counts, PACKET_ARRAYS["counts"][0]),
    }
    if positions is not None:
        msg["positions"] = _raw(positions, PACKET_ARRAYS["positions"][0])
    if centre is not None:
        msg["centre"] = _raw(centre, PACKET_ARRAYS["centre"][0])
        msg["half_l"] = float(half_l)
    if trace_id is not None:
        msg["trace_id"] = _raw(trace_id, PACKET_ARRAYS["trace_id"][0])
    if time_s is not None:
        msg["time"] = _raw(time_s, PACKET_ARRAYS["time"][0])
    return pack(msg)


def encode_batch(stream: str, seq: int, batch: TupleBatch, t_acq: float | None = None) -> bytes:
    """A packet from a :class:`TupleBatch` (positions in full; time/trace id only when known)."""
    has_time = not np.isnan(batch.time_s).all()
    has_trace = bool((batch.trace_id != -1).any())
    return encode_packet(stream, seq, batch.counts, batch.positions,
                         trace_id=batch.trace_id if has_trace else None,
                         time_s=batch.time_s if has_time else None, t_acq=t_acq)


def encode_end(stream: str, seq: int) -> bytes:
    """End-of-stream marker: ``seq`` is the number of packets sent (the next unused seq)."""
    return pack({"v": VERSION, "kind": "end", "stream": stream, "seq": int(seq), "t_acq": time.time()})


def encode_result(packet: Packet, pred: Prediction, t_done: float | None = None) -> bytes:
    """The per-tuple results of ``packet`` (what the sink persists and republishes)."""
    b = packet.batch
    msg: dict[str, Any] = {
        "v": VERSION, "kind": "result", "stream": packet.stream, "seq": packet.seq, "n": len(b),
        "t_acq": packet.t_acq, "t_done": float(time.time() if t_done is None else t_done),
        "model": pred.model_id,
        "distance": _raw(pred.distance, RESULT_ARRAYS["distance"][0]),
        "lower": _raw(pred.lower, RESULT_ARRAYS["lower"][0]),
        "upper": _raw(pred.upper, RESULT_ARRAYS["upper"][0]),
        "flags": _raw(pred.flags, RESULT_ARRAYS["flags"][0]),
        "photons": _raw(b.photons, RESULT_ARRAYS["photons"][0]),
        "centre": _raw(b.centre, RESULT_ARRAYS["centre"][0]),
    }
    if packet.has_trace_id:
        msg["trace_id"] = _raw(b.trace_id, RESULT_ARRAYS["trace_id"][0])
    if packet.has_time:
        msg["time"] = _raw(b.time_s, RESULT_ARRAYS["time"][0])
    return pack(msg)


def encode_error(reason: str, detail: str = "", *, stream: str | None = None, seq: int | None = None,
                 source: str = "", n: int | None = None) -> bytes:
    """An ``error`` message: one rejected packet (stream/seq/n are None when undecodable)."""
    return pack({"v": VERSION, "kind": "error", "reason": reason, "detail": detail[:500],
                 "stream": stream, "seq": seq, "n": n, "source": source, "t": time.time()})


def encode_stats(stats: dict[str, Any]) -> bytes:
    """A ``stats`` message; keys are listed in the README (see :class:`streamer.pipeline.sink`)."""
    return pack({"v": VERSION, "kind": "stats", "t": time.time(), **stats})


# --------------------------------------------------------------------------- decoding


def unpack(raw: bytes | memoryview) -> dict[str, Any]:
    """Any message as a dict, or :class:`PacketError` (``not-msgpack``/``not-a-map``/``unknown-version``)."""
    if len(raw) > MAX_PACKET_BYTES:
        raise PacketError("oversized", f"{len(raw)} bytes > {MAX_PACKET_BYTES}")
    try:
        msg = msgpack.unpackb(raw, raw=False, strict_map_key=True,
                              max_bin_len=MAX_PACKET_BYTES, max_array_len=1024, max_map_len=256)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise PacketError("not-msgpack", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(msg, dict):
        raise PacketError("not-a-map", type(msg).__name__)
    v = msg.get("v")
    if v != VERSION or isinstance(v, bool):
        raise PacketError("unknown-version", f"v={v!r}, this receiver implements v={VERSION}")
    return msg


def _get(msg: dict, key: str, types: type | tuple[type, ...]) -> Any:
    if key not in msg:
        raise PacketError("missing-key", key)
    val = msg[key]
    if not isinstance(val, types) or isinstance(val, bool):
        raise PacketError("bad-type", f"{key}: {type(val).__name__}")
    return val


def _array(msg: dict, key: str, n: int, spec: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> np.ndarray:
    dtype, shape = spec[key]
    buf = _get(msg, key, (bytes, bytearray, memoryview))
    expected = n * dtype.itemsize * math.prod(shape)
    if len(buf) != expected:
        raise PacketError("bad-size", f"{key}: {len(buf)} bytes, expected {expected} for n={n} "
                          f"{dtype.str} x {shape or 1}")
    return np.frombuffer(buf, dtype).reshape((n, *shape))


def header(msg: dict) -> tuple[str, int]:
    """(stream, seq) of a decoded message; :class:`PacketError` when they are malformed."""
    stream = _get(msg, "stream", str)
    if len(stream) > MAX_STREAM_ID:
        raise PacketError("bad-type", f"stream id longer than {MAX_STREAM_ID} characters")
    seq = _get(msg, "seq", int)
    if seq < 0:
        raise PacketError("negative", f"seq={seq}")
    return stream, seq


def validate_packet(msg: dict, max_tuples: int = MAX_TUPLES) -> Packet:
    """Check a decoded ``tuples`` map and wrap it as a :class:`Packet` (vectorized checks)."""
    kind = msg.get("kind")
    if kind != "tuples":
        raise PacketError("unknown-kind", repr(kind))
    stream, seq = header(msg)
    t_acq = float(_get(msg, "t_acq", (int, float)))
    if not math.isfinite(t_acq):
        raise PacketError("non-finite", "t_acq")
    if t_acq < 0:
        raise PacketError("negative", f"t_acq={t_acq}")
    n = _get(msg, "n", int)
    if n < 1:
        raise PacketError("empty", f"n={n}")
    if n > max_tuples:
        raise PacketError("oversized", f"n={n} > {max_tuples}")
    counts = _array(msg, "counts", n, PACKET_ARRAYS)
    if "positions" in msg and "centre" in msg:
        raise PacketError("ambiguous-positions")
    if "positions" in msg:
        positions = _array(msg, "positions", n, PACKET_ARRAYS)
        if not np.isfinite(positions).all():
            raise PacketError("non-finite", "positions")
    elif "centre" in msg:
        centre = _array(msg, "centre", n, PACKET_ARRAYS)
        half_l = float(_get(msg, "half_l", (int, float)))
        if not (np.isfinite(centre).all() and math.isfinite(half_l)):
            raise PacketError("non-finite", "centre/half_l")
        if half_l <= 0:
            raise PacketError("negative", f"half_l={half_l}")
        positions = beam_positions(centre, np.float32(half_l)).astype(np.float32)  # = float32 arithmetic
    else:
        raise PacketError("missing-key", "positions or centre")
    if not (np.diff(positions, axis=2) > 0).all():
        raise PacketError("non-increasing-positions", "need c-L/2 < c < c+L/2 on both axes")
    trace_id = _array(msg, "trace_id", n, PACKET_ARRAYS) if "trace_id" in msg else None
    time_s = None
    if "time" in msg:
        time_s = _array(msg, "time", n, PACKET_ARRAYS)
        if not np.isfinite(time_s).all():
            raise PacketError("non-finite", "time")
        if (time_s < 0).any():
            raise PacketError("negative", "time")
        back = np.diff(time_s) < 0
        if trace_id is not None:  # a packet may hold the end of one trace and the start of the next
            back &= trace_id[1:] == trace_id[:-1]
        if back.any():
            raise PacketError("non-monotonic-time", f"at tuple {int(np.argmax(back)) + 1}")
    batch = TupleBatch.build(counts, positions, trace_id, time_s)
    return Packet(stream, seq, t_acq, batch, time_s is not None, trace_id is not None)


def decode_packet(raw: bytes | memoryview, max_tuples: int = MAX_TUPLES) -> Packet:
    """Bytes -> validated :class:`Packet`, or :class:`PacketError` with the reason."""
    return validate_packet(unpack(raw), max_tuples)


@dataclass(frozen=True)
class Result:
    """A decoded ``result`` message; arrays are read-only views into the message bytes."""

    stream: str
    seq: int
    n: int
    t_acq: float
    t_done: float
    model: str
    arrays: dict[str, np.ndarray]  # keys of RESULT_ARRAYS present in the message

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise AttributeError(name) from None


def decode_result(raw: bytes | memoryview | dict) -> Result:
    """Bytes (or an already unpacked map) of a ``result`` message -> :class:`Result`."""
    msg = raw if isinstance(raw, dict) else unpack(raw)
    if msg.get("kind") != "result":
        raise PacketError("unknown-kind", repr(msg.get("kind")))
    stream, seq = header(msg)
    n = _get(msg, "n", int)
    arrays = {k: _array(msg, k, n, RESULT_ARRAYS) for k in RESULT_ARRAYS if k in msg}
    for k in ("distance", "lower", "upper", "flags"):
        if k not in arrays:
            raise PacketError("missing-key", k)
    return Result(stream, seq, n, float(_get(msg, "t_acq", (int, float))),
                  float(_get(msg, "t_done", (int, float))), str(msg.get("model", "")), arrays)


def decode_message(raw: bytes | memoryview) -> dict[str, Any]:
    """Any sink PUB payload (stats/error as plain dicts, results with numpy arrays under their keys)."""
    msg = unpack(raw)
    if msg.get("kind") == "result":
        res = decode_result(msg)
        return {**{k: v for k, v in msg.items() if k not in RESULT_ARRAYS}, **res.arrays}
    return msg
