"""MINFLUX on the wire: the ``tuples`` packet declaration, its semantic checks, and encode helpers.

Packet (kind ``tuples``; v1 packets without ``modality`` mean MINFLUX): ``n``; ``counts`` <u2 (n,2,3);
``positions`` <f4 (n,2,3) nm, or ``centre`` <f4 (n,2) + ``half_l`` nm; optional ``trace_id`` <i8 (n,)
and ``time`` <f8 (n,) s. Results per tuple: distance/lower/upper nm, flags, photons, centre (+ trace_id,
time when the packet had them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...core import wire
from ...core.modality import ArraySpec, HeaderField, Modality, Packet, PacketKind, ResultSpec
from ...core.wire import PacketError
from .instrument import PROFILE
from .physics import HALF_L_NM, beam_positions
from .prediction import (FLAG_INSTRUMENT_MISMATCH, FLAG_INVALID_INPUT, FLAG_LOW_PHOTONS, FLAG_NO_INTERVAL,
                         FLAG_NONPHYSICAL, FLAG_NOT_TWO_ON, FLAG_OUT_OF_RANGE, FLAG_UNCALIBRATED)
from .tuples import TupleBatch

NAME = "minflux"
MAX_TUPLES = 1 << 20

TUPLES = PacketKind(
    "tuples",
    fields=(HeaderField("half_l", float, None, positive=True, doc="half the pattern size L/2, nm (with centre)"),),
    arrays=(
        ArraySpec("counts", "<u2", ("n", 2, 3), doc="photon counts: axis x then y; exposures c-L/2, c, c+L/2"),
        ArraySpec("positions", "<f4", ("n", 2, 3), required=False, finite="flag",
                  doc="absolute beam positions, nm (a tuple with NaN/inf is flagged, not the packet rejected)"),
        ArraySpec("centre", "<f4", ("n", 2), required=False, finite="flag", doc="pattern centre, nm (instead of positions)"),
        ArraySpec("trace_id", "<i8", ("n",), required=False, doc="ruler / trace of each tuple"),
        ArraySpec("time", "<f8", ("n",), required=False, finite="flag", doc="acquisition time of each tuple, s"),
    ),
    max_items=MAX_TUPLES,
    doc="photon-count tuples (6 exposures around a centre)",
)

RESULTS = ResultSpec(
    items=(
        ArraySpec("distance", "<f4", ("n",), finite=False, doc="two-emitter distance, nm"),
        ArraySpec("lower", "<f4", ("n",), finite=False, doc="90% interval lower bound, nm (NaN: none)"),
        ArraySpec("upper", "<f4", ("n",), finite=False, doc="90% interval upper bound, nm"),
        ArraySpec("flags", "u1", ("n",), doc="bit set of the flags below"),
        ArraySpec("photons", "<u4", ("n",), doc="total photons of the tuple"),
        ArraySpec("centre", "<f4", ("n", 2), doc="pattern centre, nm"),
        ArraySpec("trace_id", "<i8", ("n",), required=False, doc="as sent"),
        ArraySpec("time", "<f8", ("n",), required=False, finite=False, doc="as sent, s"),
        # the self-calibrating ``general`` predictor adds these (issue 15)
        ArraySpec("state", "u1", ("n",), required=False, doc="segmented state: 2 two-on, 1 one-on, 0 background, 255 unknown"),
        ArraySpec("v0", "<f4", ("n",), required=False, doc="instrument v0 used (calibrated live or supplied)"),
        ArraySpec("background", "<f4", ("n",), required=False, doc="instrument background used, counts/exposure"),
        ArraySpec("trace_distance", "<f4", ("n",), required=False, finite=False,
                  doc="running per-trace distance over the trace's 2-on tuples so far, nm"),
        ArraySpec("trace_lower", "<f4", ("n",), required=False, finite=False, doc="its 90% interval, nm (NaN: too few)"),
        ArraySpec("trace_upper", "<f4", ("n",), required=False, finite=False, doc="its 90% interval, nm"),
    ),
    # the general predictor's per-packet partial sums (partials.py): merged over all workers'
    # persisted results by `streamer traces`, each trace's answer from all its 2-on tuples
    detections=(
        ArraySpec("part_trace", "<i8", ("m",), required=False, doc="trace the sums belong to"),
        ArraySpec("part_kind", "u1", ("m",), required=False, doc="2: a block of 2-on tuples, 1: 1-on, 0: background-only"),
        ArraySpec("part_n", "<i4", ("m",), required=False, doc="tuples summed"),
        ArraySpec("part_sums", "<f8", ("m", 2, 6), required=False,
                  doc="per axis: sum(P^2+Q^2-var), sum m0, sum m0^2, sum var m0, sum P, sum(Q^2-var Q) "
                      "(kind 0: [0,0] = total counts)"),
    ),
    detection_noun="per-trace partial sums",
    flags={FLAG_NO_INTERVAL: "no interval", FLAG_LOW_PHOTONS: "low photons",
           FLAG_OUT_OF_RANGE: "out of range", FLAG_NONPHYSICAL: "non-physical", FLAG_INVALID_INPUT: "invalid input",
           FLAG_UNCALIBRATED: "uncalibrated instrument", FLAG_INSTRUMENT_MISMATCH: "instrument mismatch",
           FLAG_NOT_TWO_ON: "not 2-on"},
    invalid_flag=FLAG_INVALID_INPUT,
    intervals=("lower", "upper", "trace_lower", "trace_upper"),
    mismatch_flag=FLAG_INSTRUMENT_MISMATCH,
)

REASONS = {
    "ambiguous-positions": "both 'positions' and 'centre' given",
    "non-increasing-positions": "beam positions of an axis not strictly increasing (c-L/2 < c < c+L/2)",
    "non-monotonic-time": "per-tuple 'time' decreases between consecutive tuples of the same trace",
    "instrument-mismatch-measured": "tuples flagged (no interval) because what the stream shows -- the beam "
                                    "positions' L/2, the live-calibrated v0/background -- lies outside the model's coverage",
}


def validate(packet: Packet) -> Packet:
    """Positions from centre + L/2 when needed, monotonic patterns and times; the batch in ``extra``."""
    a = packet.arrays
    if "positions" in a and "centre" in a:
        raise PacketError("ambiguous-positions")
    if "positions" in a:
        positions = a["positions"]
    elif "centre" in a:
        half_l = packet.header["half_l"]
        if half_l is None:
            raise PacketError("missing-key", "half_l (with centre)")
        positions = beam_positions(a["centre"], np.float32(half_l)).astype(np.float32)  # = float32 arithmetic
    else:
        raise PacketError("missing-key", "positions or centre")
    # the common case (no flagged tuple) indexes nothing: boolean masks copy every array (per packet)
    ok = None if packet.invalid is None or not packet.invalid.any() else ~packet.invalid
    if ok is not None:  # flagged tuples get a harmless pattern; their results are overwritten as invalid
        positions = positions.copy()
        positions[~ok] = beam_positions(np.zeros((1, 2), np.float32), np.float32(HALF_L_NM))
    # slices, not np.diff: same test without diff's temporaries (~10 us per packet of 1000)
    if not ((positions[..., 1:] > positions[..., :-1]).all()):
        raise PacketError("non-increasing-positions", "need c-L/2 < c < c+L/2 on both axes")
    time_s, trace_id = a.get("time"), a.get("trace_id")
    if time_s is not None:
        t = time_s if ok is None else time_s[ok]
        if (t < 0).any():
            raise PacketError("negative", "time")
        tid = trace_id if trace_id is None or ok is None else trace_id[ok]
        back = t[1:] < t[:-1]
        if tid is not None:  # a packet may hold the end of one trace and the start of the next
            back &= tid[1:] == tid[:-1]
        if back.any():
            at = np.argmax(back) + 1
            raise PacketError("non-monotonic-time", f"at tuple {int(at if ok is None else np.flatnonzero(ok)[at])}")
    packet.extra["batch"] = TupleBatch.build(a["counts"], positions, trace_id, time_s)
    return packet


#: the wire part of the modality (the package's MODALITY adds predictors, view and commands to it)
DECLARATION = Modality(name=NAME, title="MINFLUX two-emitter distance", packets=(TUPLES,), results=RESULTS,
                       predictors=(), default_predictor="static", reasons=REASONS, validate=validate,
                       profile=PROFILE,
                       doc="photon-count tuples (6 exposures around a centre) -> two-emitter distance + 90% interval")


# --------------------------------------------------------------------------- helpers for publishers and tests


def encode_packet(stream: str, seq: int, counts: np.ndarray, positions: np.ndarray | None = None, *,
                  centre: np.ndarray | None = None, half_l: float = HALF_L_NM, trace_id: np.ndarray | None = None,
                  time_s: np.ndarray | None = None, t_acq: float | None = None, v: int = wire.VERSION,
                  instrument: str | None = None) -> bytes:
    """One ``tuples`` packet. Give either full ``positions`` (n,2,3) or ``centre`` (n,2) + ``half_l``;
    ``instrument`` names the stream's instrument profile."""
    counts = np.asarray(counts)
    head: dict = {"n": len(counts)}
    if centre is not None:
        head["half_l"] = float(half_l)
    arrays = {"counts": counts, "positions": positions, "centre": centre, "trace_id": trace_id, "time": time_s}
    return wire.encode_packet(NAME, "tuples", stream, seq, head, arrays, TUPLES, t_acq, v=v, instrument=instrument)


def encode_batch(stream: str, seq: int, batch: TupleBatch, t_acq: float | None = None) -> bytes:
    """A packet from a :class:`TupleBatch` (positions in full; time/trace id only when known)."""
    has_time = not np.isnan(batch.time_s).all()
    has_trace = bool((batch.trace_id != -1).any())
    return encode_packet(stream, seq, batch.counts, batch.positions, trace_id=batch.trace_id if has_trace else None,
                         time_s=batch.time_s if has_time else None, t_acq=t_acq)


@dataclass(frozen=True)
class TuplePacket:
    """A decoded ``tuples`` packet seen as MINFLUX tuples."""

    stream: str
    seq: int
    t_acq: float
    batch: TupleBatch
    has_time: bool
    has_trace_id: bool
    invalid: np.ndarray | None = None  # tuples flagged for NaN/inf input (None: all valid)


def decode_packet(raw: bytes | memoryview, max_tuples: int = MAX_TUPLES) -> TuplePacket:
    """Bytes -> validated MINFLUX packet, or :class:`PacketError` with the reason."""
    msg = wire.unpack(raw)
    if wire.envelope(msg).modality != NAME:
        raise PacketError("unknown-modality", "not a MINFLUX packet")
    n = msg.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > max_tuples:
        raise PacketError("oversized", f"n={n} > {max_tuples}")
    p = wire.decode_packet(msg, DECLARATION)
    return TuplePacket(p.stream, p.seq, p.t_acq, p.extra["batch"], "time" in p.arrays, "trace_id" in p.arrays,
                       p.invalid)


def result_arrays(packet: Packet, distance, lower, upper, flags, photons=None) -> dict[str, np.ndarray]:
    """The declared result arrays of ``packet`` from a prediction (``photons``: the tuples' totals when
    the predictor has them already)."""
    b: TupleBatch = packet.extra["batch"]
    out = {"distance": distance, "lower": lower, "upper": upper, "flags": flags,
           "photons": b.photons if photons is None else photons, "centre": b.centre}
    for key in ("trace_id", "time"):
        if key in packet.arrays:
            out[key] = packet.arrays[key]
    return out
