"""Wire format v2: the envelope, a codec driven by a modality's declarations, and the one reason table.

Every message is ONE msgpack map with string keys. Arrays travel as msgpack ``bin`` holding raw
little-endian C-order bytes; the receiver views them with ``numpy.frombuffer`` (no copy after
msgpack's own). The packet's declaration (:class:`~streamer.core.modality.PacketKind`) fixes each
array's dtype and shape in terms of header integers, so a sender that gets a dtype or a size wrong
is caught by the byte-length check. Unknown keys are ignored; a change of meaning bumps ``v``.

Envelope (every input packet): ``v`` (2; 1 = legacy MINFLUX without ``modality``), ``kind``,
``modality``, ``stream`` (str), ``seq`` (int >= 0, per stream), ``t_acq`` (float, Unix s).
``kind: "end"`` closes a stream (``seq`` = packets sent). Optional ``instrument`` (str).

Results are self-describing: besides the envelope they carry ``n`` (items), ``m`` (detections, when
the modality declares any), ``model``, ``t_done`` and ``layout`` {name: [dtype, tail shape, axis]}
with axis ``"n"`` or ``"m"``, so the sink, the writer and any monitor decode results of every
modality without knowing it.
"""

from __future__ import annotations

import hashlib
import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import msgpack
import numpy as np

from .modality import ArraySpec, Modality, Packet, PacketKind, ResultSpec

VERSION = 2
LEGACY_MODALITY = "minflux"  #: what a v1 packet (no ``modality`` key) means
MAX_PACKET_BYTES = 64 << 20  #: raw packets larger than this are rejected as ``oversized`` before decoding
MAX_STREAM_ID = 64  #: characters
MAX_NAME = 64

#: PUB topics of the sink (first frame of each multipart message)
TOPIC_RESULT, TOPIC_STATS, TOPIC_ERROR = b"result", b"stats", b"error"

#: rejection reason -> meaning (the ``reason`` of an error message). Modalities add their own
#: (``Modality.reasons``); :func:`streamer.core.registry.reason_table` is the merged table.
REASONS: dict[str, str] = {
    "not-msgpack": "payload is not valid msgpack",
    "not-a-map": "payload is not a msgpack map with string keys",
    "unknown-version": "'v' is missing or not a schema version this receiver implements (1 or 2)",
    "unknown-modality": "'modality' names no modality installed here and no worker serves it",
    "unknown-kind": "'kind' is not a packet kind of the modality (or 'end')",
    "missing-key": "a required key is absent",
    "bad-type": "a key has the wrong msgpack type (e.g. str where int expected)",
    "bad-size": "an array's byte length does not match its declared dtype and shape",
    "bad-value": "a header value is outside its declared range",
    "oversized": "the item count or the raw packet exceeds the receiver's limit",
    "empty": "the item count is < 1",
    "non-finite": "NaN or inf in a value that must be finite",
    "negative": "a value that cannot be negative (or must be > 0) is: seq, t_acq, sizes, periods",
    "redelivery-limit": "the packet was re-sent to workers too often (it kills them); dropped",
    "worker-error": "the predictor raised on a packet that passed validation",
    "conflict": "(kept aside, not a rejection) a valid packet with the seq of a persisted result but other content: "
                "written to --out/conflicts, never replacing what was persisted",
    "no-worker": "(notice, not a rejection) no live worker serves the packet's modality: packets are held, "
                 "bounded by the sink's window, until one does",
}


class PacketError(ValueError):
    """A message that fails validation; ``reason`` is a key of the reason table."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Envelope:
    v: int
    kind: str
    modality: str
    stream: str
    seq: int


# --------------------------------------------------------------------------- basic (de)serialisation


def pack(message: Mapping[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack(raw: bytes | memoryview) -> dict[str, Any]:
    """Any message as a dict, or :class:`PacketError` (not-msgpack / not-a-map / unknown-version)."""
    if len(raw) > MAX_PACKET_BYTES:
        raise PacketError("oversized", f"{len(raw)} bytes > {MAX_PACKET_BYTES}")
    try:
        msg = msgpack.unpackb(raw, raw=False, strict_map_key=True,
                              max_bin_len=MAX_PACKET_BYTES, max_array_len=1024, max_map_len=256)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise PacketError("not-msgpack", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(msg, dict):
        raise PacketError("not-a-map", type(msg).__name__)
    return _check_version(msg)


def _check_version(msg: dict[str, Any]) -> dict[str, Any]:
    v = msg.get("v")
    if v not in (1, 2) or isinstance(v, bool):
        raise PacketError("unknown-version", f"v={v!r}, this receiver implements v=1 and v=2")
    return msg


SCAN_MIN_BYTES = 1 << 17  # below this, :func:`scan` is :func:`unpack` (copying is cheaper than parsing in Python)
_FIXED = {0xCC: (">B", 1), 0xCD: (">H", 2), 0xCE: (">I", 4), 0xCF: (">Q", 8), 0xD0: (">b", 1), 0xD1: (">h", 2),
          0xD2: (">i", 4), 0xD3: (">q", 8), 0xCA: (">f", 4), 0xCB: (">d", 8)}
_CONST = {0xC0: None, 0xC2: False, 0xC3: True}
_LENGTH = {0xC4: (">B", 1), 0xC5: (">H", 2), 0xC6: (">I", 4), 0xD9: (">B", 1), 0xDA: (">H", 2), 0xDB: (">I", 4)}


def scan(raw: bytes | memoryview) -> dict[str, Any]:
    """Like :func:`unpack` for a flat map, but ``bin`` values come back as memoryview slices of
    ``raw`` (no copy): the sink reads envelopes of packets of many megabytes and forwards them as
    they are. Maps holding nested arrays/maps/ext fall back to :func:`unpack`, and so do small
    messages: below :data:`SCAN_MIN_BYTES` msgpack's C decoder copying the arrays is faster than
    this loop (1.4 vs 6.5 us for a 52 kB MINFLUX packet)."""
    import struct

    if len(raw) > MAX_PACKET_BYTES:
        raise PacketError("oversized", f"{len(raw)} bytes > {MAX_PACKET_BYTES}")
    if len(raw) < SCAN_MIN_BYTES:
        return unpack(raw)
    mv = memoryview(raw).cast("B") if not isinstance(raw, bytes) else memoryview(raw)
    try:
        b0 = mv[0]
        if 0x80 <= b0 <= 0x8F:
            count, pos = b0 & 0x0F, 1
        elif b0 == 0xDE:
            count, pos = struct.unpack_from(">H", mv, 1)[0], 3
        elif b0 == 0xDF:
            count, pos = struct.unpack_from(">I", mv, 1)[0], 5
        else:
            return unpack(raw)
        out: dict[str, Any] = {}
        for i in range(2 * count):
            t = mv[pos]
            if t <= 0x7F:
                val, pos = t, pos + 1
            elif t >= 0xE0:
                val, pos = t - 0x100, pos + 1
            elif 0xA0 <= t <= 0xBF:
                n = t & 0x1F
                val, pos = bytes(mv[pos + 1:pos + 1 + n]).decode(), pos + 1 + n
            elif t in _CONST:
                val, pos = _CONST[t], pos + 1
            elif t in _FIXED:
                fmt, n = _FIXED[t]
                val, pos = struct.unpack_from(fmt, mv, pos + 1)[0], pos + 1 + n
            elif t in _LENGTH:
                fmt, h = _LENGTH[t]
                n = struct.unpack_from(fmt, mv, pos + 1)[0]
                start, pos = pos + 1 + h, pos + 1 + h + n
                if pos > len(mv):
                    raise ValueError("truncated")
                val = mv[start:pos] if t in (0xC4, 0xC5, 0xC6) else bytes(mv[start:pos]).decode()
            else:
                return unpack(raw)  # nested containers or ext: the general decoder
            if i % 2 == 0:
                if not isinstance(val, str):
                    raise PacketError("not-a-map", "map keys must be strings")
                key = val
            else:
                out[key] = val
        if pos != len(mv):
            raise ValueError("trailing bytes")
    except PacketError:
        raise
    except (IndexError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise PacketError("not-msgpack", f"{type(exc).__name__}: {exc}") from None
    return _check_version(out)


def get(msg: Mapping, key: str, types: type | tuple[type, ...]) -> Any:
    """``msg[key]`` checked against ``types`` (bool never counts as int)."""
    if key not in msg:
        raise PacketError("missing-key", key)
    val = msg[key]
    if not isinstance(val, types) or isinstance(val, bool):
        raise PacketError("bad-type", f"{key}: {type(val).__name__}")
    return val


def header(msg: Mapping) -> tuple[str, int]:
    """(stream, seq) of a decoded message; :class:`PacketError` when malformed."""
    stream = get(msg, "stream", str)
    if not stream or len(stream) > MAX_STREAM_ID:
        raise PacketError("bad-type", f"stream id must be 1-{MAX_STREAM_ID} characters")
    seq = get(msg, "seq", int)
    if seq < 0:
        raise PacketError("negative", f"seq={seq}")
    return stream, seq


def envelope(msg: Mapping) -> Envelope:
    """The envelope of an unpacked input message (v1 means MINFLUX)."""
    stream, seq = header(msg)
    kind = get(msg, "kind", str)
    if msg["v"] == 1:
        modality = LEGACY_MODALITY
    else:
        modality = get(msg, "modality", str)
        if not modality or len(modality) > MAX_NAME:
            raise PacketError("bad-type", "modality must be a short non-empty name")
    return Envelope(msg["v"], kind, modality, stream, seq)


def content_digest(msg: Mapping[str, Any]) -> bytes:
    """16-byte fingerprint of a packet's content: every key but the send time ``t_acq`` (a publisher
    that re-encodes a packet to retry it gets a new ``t_acq``, not new content). Arrays enter through
    their CRC-32 (3 GB/s here, 3x SHA-256: the sink fingerprints every packet it ingests), everything
    else verbatim, all through SHA-256: telling a retry from a different packet with the same seq
    needs no cryptographic strength against the sender."""
    h = hashlib.sha256()
    for key in sorted(msg):
        if key == "t_acq":
            continue
        val = msg[key]
        h.update(key.encode())
        if isinstance(val, (bytes, bytearray, memoryview)):
            h.update(b"%d:%d" % (len(val), zlib.crc32(val)))
        else:
            h.update(repr(val).encode())
    return h.digest()[:16]


# --------------------------------------------------------------------------- input packets


def encode_packet(modality: str, kind: str, stream: str, seq: int, header_fields: Mapping[str, Any],
                  arrays: Mapping[str, np.ndarray], spec: PacketKind | None = None,
                  t_acq: float | None = None, v: int = VERSION, instrument: str | None = None) -> bytes:
    """One input packet. With ``spec``, arrays are cast to their declared (first) dtype; without
    it they are sent as given (little-endian required). ``t_acq`` defaults to now; ``instrument``
    names the stream's instrument profile (see :mod:`streamer.core.profile`)."""
    msg: dict[str, Any] = {"v": v, "kind": kind, "stream": stream, "seq": int(seq),
                           "t_acq": float(time.time() if t_acq is None else t_acq)}
    if v >= 2:
        msg["modality"] = modality
    if instrument is not None:
        msg["instrument"] = str(instrument)
    msg.update(header_fields)
    declared = {a.name: a for a in spec.arrays} if spec else {}
    for name, arr in arrays.items():
        if arr is None:
            continue
        a = np.asarray(arr)
        d = declared.get(name)
        if d is not None and a.dtype.newbyteorder("<") not in [np.dtype(t) for t in d.dtypes]:
            a = a.astype(d.dtype)
        # a byte view, not tobytes(): msgpack copies once into the packet instead of twice (~2x faster)
        msg[name] = memoryview(np.ascontiguousarray(a, a.dtype.newbyteorder("<"))).cast("B")
        if d is not None and len(d.dtypes) > 1:  # several allowed: say which, never leave it to the length
            msg[f"{name}_dtype"] = a.dtype.newbyteorder("<").str
    return pack(msg)


def encode_end(stream: str, seq: int, modality: str | None = None) -> bytes:
    """End-of-stream marker: ``seq`` is the number of packets sent (the next unused seq)."""
    msg = {"v": VERSION, "kind": "end", "stream": stream, "seq": int(seq), "t_acq": time.time()}
    if modality:
        msg["modality"] = modality
    return pack(msg)


def _field_value(msg: Mapping, f) -> Any:
    if f.name not in msg:
        if f.required:
            raise PacketError("missing-key", f.name)
        return f.default
    if f.type is float:
        val = float(get(msg, f.name, (int, float)))
        if not math.isfinite(val):
            raise PacketError("non-finite", f.name)
    else:
        val = get(msg, f.name, f.type)
    if f.type is not str:
        if f.positive and val <= 0:
            raise PacketError("negative", f"{f.name}={val} must be > 0")
        if (f.min is not None and val < f.min) or (f.max is not None and val > f.max):
            raise PacketError("bad-value", f"{f.name}={val} outside [{f.min}, {f.max}]")
    return val


def _shape(spec: ArraySpec, ints: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(ints[s] if isinstance(s, str) else s for s in spec.shape)


def _decode_array(msg: Mapping, spec: ArraySpec, shape: tuple[int, ...], flaggable: bool = False
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """The array, and the mask of items (rows) with NaN/inf when they are flagged, not rejected."""
    buf = get(msg, spec.name, (bytes, bytearray, memoryview))
    count = math.prod(shape)  # Python ints: no overflow for absurd headers
    choices = [np.dtype(d) for d in spec.dtypes]
    named = msg.get(f"{spec.name}_dtype")
    if isinstance(named, str):
        try:
            dtype = np.dtype(named)
        except TypeError:
            raise PacketError("bad-type", f"{spec.name}_dtype={named!r}") from None
        if dtype not in choices:
            raise PacketError("bad-type", f"{spec.name}_dtype={named!r}, allowed {list(spec.dtypes)}")
    else:
        fits = [d for d in choices if count * d.itemsize == len(buf)]
        if len(fits) != 1:
            sizes = " or ".join(f"{count * d.itemsize} ({d.str})" for d in choices)
            raise PacketError("bad-size", f"{spec.name}: {len(buf)} bytes, expected {sizes} for shape {shape}")
        dtype = fits[0]
    if count * dtype.itemsize != len(buf):
        raise PacketError("bad-size", f"{spec.name}: {len(buf)} bytes, expected {count * dtype.itemsize} "
                          f"for {dtype.str} x {shape}")
    arr = np.frombuffer(buf, dtype).reshape(shape)
    if spec.finite and dtype.kind == "f":
        ok = np.isfinite(arr)
        if not ok.all():
            if spec.finite != "flag" or not flaggable:
                raise PacketError("non-finite", spec.name)
            bad = ~ok.reshape(len(arr), -1).all(axis=1)
            arr = arr.copy()
            arr[bad] = 0  # the predictor sees finite numbers; the rows' results are overwritten
            return arr, bad
    return arr, None


def decode_packet(msg: Mapping, modality: Modality) -> Packet:
    """Validate an unpacked input map against ``modality``'s declaration (vectorized checks)."""
    env = envelope(msg)
    spec = modality.packet_kind(env.kind)
    if spec is None:
        raise PacketError("unknown-kind", f"{env.kind!r} (modality {modality.name} has "
                          f"{', '.join(p.name for p in modality.packets)})")
    t_acq = float(get(msg, "t_acq", (int, float)))
    if not math.isfinite(t_acq):
        raise PacketError("non-finite", "t_acq")
    if t_acq < 0:
        raise PacketError("negative", f"t_acq={t_acq}")
    n = get(msg, spec.item_key, int)
    if n < 1:
        raise PacketError("empty", f"{spec.item_key}={n}")
    if n > spec.max_items:
        raise PacketError("oversized", f"{spec.item_key}={n} > {spec.max_items}")
    head = {f.name: _field_value(msg, f) for f in spec.fields}
    ints = {spec.item_key: n, **{k: v for k, v in head.items() if isinstance(v, int)}}
    arrays, bad_rows = {}, []
    flaggable = bool(modality.results.invalid_flag)
    for a in spec.arrays:
        if a.name not in msg:
            if a.required:
                raise PacketError("missing-key", a.name)
            continue
        arrays[a.name], bad = _decode_array(msg, a, _shape(a, ints), flaggable)
        if bad is not None:
            bad_rows.append(bad)
    extra = {"instrument": msg["instrument"]} if isinstance(msg.get("instrument"), str) else {}
    packet = Packet(env.stream, env.seq, t_acq, modality.name, env.kind, n, head, arrays, extra)
    if bad_rows:
        packet.flag_invalid(np.logical_or.reduce(bad_rows), "non-finite")
    if packet.invalid is not None and packet.invalid.all():
        raise PacketError("non-finite", "every item has NaN/inf")
    return modality.validate(packet) if modality.validate else packet


# --------------------------------------------------------------------------- results


def encode_result(packet: Packet, spec: ResultSpec, out: Mapping[str, np.ndarray], model_id: str,
                  t_done: float | None = None) -> bytes:
    """A result message for ``packet`` from a predictor's output, checked against ``spec``.

    Raises ValueError when the predictor returned something else than it declared (a bug the
    worker reports as ``worker-error``).
    """
    layout: dict[str, list] = {}
    msg: dict[str, Any] = {"v": VERSION, "kind": "result", "modality": packet.modality, "stream": packet.stream,
                           "seq": packet.seq, "n": packet.n, "t_acq": packet.t_acq,
                           "t_done": float(time.time() if t_done is None else t_done), "model": model_id}
    m = None
    item_rows, det_rows, det_optional = _result_rows(spec)
    if spec.detections and not (det_optional and "item" not in out):
        item = out.get("item")
        if item is None:
            raise ValueError("predictor returned detections without 'item'")
        m = len(item)
        msg["m"] = m
    else:
        det_rows = ()
    for specs, rows in ((item_rows, packet.n), (det_rows, m)):
        for name, dt, tail, axis, required in specs:
            arr = out.get(name)
            if arr is None:
                if required:
                    raise ValueError(f"predictor did not return {name!r}")
                continue
            arr = np.asarray(arr)
            if arr.shape != (rows, *tail):
                raise ValueError(f"{name}: shape {arr.shape}, declared {(rows, *tail)}")
            # a byte view, not tobytes(): msgpack copies once into the message instead of twice
            # (flattened first: memoryview cannot cast an empty multi-dimensional array)
            msg[name] = memoryview(np.ascontiguousarray(arr, dt).reshape(-1)).cast("B")
            layout[name] = [dt.str, list(tail), axis]
    if packet.invalid is not None and packet.invalid.any():
        _mark_invalid(msg, layout, packet, spec)
    if packet.invalid_reasons:  # flagged items by reason (invalid input, instrument mismatch)
        msg["invalid"] = dict(packet.invalid_reasons)
    msg["layout"] = layout
    return pack(msg)


_RESULT_ROWS: dict[int, tuple] = {}


def _result_rows(spec: ResultSpec) -> tuple[tuple, tuple, bool]:
    """(item arrays, detection arrays with ``item`` first, every detection array optional) of
    ``spec``, each array as (name, dtype, tail shape, axis, required): worked out once per spec
    (specs live as long as their modality), not per result."""
    got = _RESULT_ROWS.get(id(spec))
    if got is None:  # the entry holds the spec itself, so its id cannot be reused by another
        def rows(specs, axis):
            return tuple((a.name, a.dtype, tuple(a.shape[1:]), axis, a.required) for a in specs)

        item = ArraySpec("item", ("<i4",), ("m",), finite=False)
        got = _RESULT_ROWS[id(spec)] = (spec, rows(spec.items, "n"), rows((item, *spec.detections), "m"),
                                        not any(a.required for a in spec.detections))
    return got[1:]


def _mark_invalid(msg: dict, layout: dict, packet: Packet, spec: ResultSpec) -> None:
    """Items with invalid input: float results NaN, the modality's invalid flag set, reasons counted."""
    bad = packet.invalid
    for name, (dt, _tail, axis) in layout.items():
        if axis != "n":
            continue
        a = np.frombuffer(msg[name], np.dtype(dt)).reshape(packet.n, -1).copy()
        if name == "flags":
            a[bad] |= np.uint8(spec.invalid_flag)
        elif np.dtype(dt).kind == "f":
            a[bad] = np.nan
        else:
            continue
        msg[name] = a.tobytes()


@dataclass(frozen=True)
class Result:
    """A decoded ``result`` message; arrays are read-only views into the message bytes."""

    modality: str
    stream: str
    seq: int
    n: int
    m: int | None
    t_acq: float
    t_done: float
    model: str
    items: dict[str, np.ndarray]
    detections: dict[str, np.ndarray]
    invalid: dict[str, int] = field(default_factory=dict)  # {reason: items flagged for invalid input}

    def __getattr__(self, name: str) -> np.ndarray:
        for table in ("items", "detections"):
            d = object.__getattribute__(self, table)
            if name in d:
                return d[name]
        raise AttributeError(name)


def decode_result(raw: bytes | memoryview | Mapping) -> Result:
    """Bytes (or an unpacked map) of a ``result`` message -> :class:`Result` (uses its ``layout``)."""
    msg = raw if isinstance(raw, Mapping) else unpack(raw)
    if msg.get("kind") != "result":
        raise PacketError("unknown-kind", repr(msg.get("kind")))
    stream, seq = header(msg)
    n = get(msg, "n", int)
    m = get(msg, "m", int) if "m" in msg else None
    layout = get(msg, "layout", dict)
    items, dets = {}, {}
    for name, desc in layout.items():
        try:
            dtype, tail, axis = np.dtype(desc[0]), tuple(int(t) for t in desc[1]), desc[2]
        except (TypeError, ValueError, IndexError):
            raise PacketError("bad-type", f"layout of {name!r}: {desc!r}") from None
        rows = n if axis == "n" else m
        if rows is None:
            raise PacketError("missing-key", "m")
        buf = get(msg, name, (bytes, bytearray, memoryview))
        if len(buf) != rows * math.prod(tail) * dtype.itemsize:
            raise PacketError("bad-size", f"{name}: {len(buf)} bytes for {rows} x {tail} {dtype.str}")
        (items if axis == "n" else dets)[name] = np.frombuffer(buf, dtype).reshape((rows, *tail))
    return Result(str(msg.get("modality", LEGACY_MODALITY)), stream, seq, n, m,
                  float(get(msg, "t_acq", (int, float))), float(get(msg, "t_done", (int, float))),
                  str(msg.get("model", "")), items, dets,
                  {str(k): int(v) for k, v in msg.get("invalid", {}).items()} if isinstance(msg.get("invalid"), dict) else {})


# --------------------------------------------------------------------------- errors and stats


def encode_error(reason: str, detail: str = "", *, stream: str | None = None, seq: int | None = None,
                 source: str = "", n: int | None = None, modality: str | None = None, nbytes: int | None = None) -> bytes:
    """An ``error`` message: one rejected packet (stream/seq/n are None when undecodable)."""
    return pack({"v": VERSION, "kind": "error", "reason": reason, "detail": detail[:500], "modality": modality,
                 "stream": stream, "seq": seq, "n": n, "bytes": nbytes, "source": source, "t": time.time()})


def encode_stats(stats: Mapping[str, Any]) -> bytes:
    """A ``stats`` message (keys: :data:`streamer.pipeline.sink.STATS_FIELDS`)."""
    return pack({"v": VERSION, "kind": "stats", "t": time.time(), **stats})


def decode_message(raw: bytes | memoryview) -> dict[str, Any]:
    """Any sink PUB payload: stats/error as plain dicts; results with numpy arrays under their keys
    (detection arrays under ``det_<name>`` when a name is also an item array)."""
    msg = unpack(raw)
    if msg.get("kind") == "result":
        res = decode_result(msg)
        base = {k: v for k, v in msg.items() if k not in res.items and k not in res.detections}
        dets = {(f"det_{k}" if k in res.items else k): v for k, v in res.detections.items()}
        return {**base, **res.items, **dets}
    return msg


def safe_str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def safe_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
