"""Small client API for microscope-control software: publish packets of any modality, subscribe to results.

    from streamer.client import Publisher, Subscriber
    with Publisher("tcp://127.0.0.1:5555", stream="cam-1", modality="electron") as pub:
        pub.send(frames=frames, height=100, width=100)   # the modality's wire keys (`streamer modalities`)
    with Publisher("tcp://127.0.0.1:5555", stream="scope-1") as pub:   # MINFLUX helper, as before:
        pub.send_tuples(counts, positions)       # counts (n,2,3) uint16, positions (n,2,3) nm
        pub.send_tuples(counts, centre=c, half_l=15.0)  # or centre (n,2) + half the pattern size
    for topic, msg in Subscriber("tcp://127.0.0.1:5557", topics=["result"]):
        print(msg["seq"], msg["distance"][:5])

Any language with ZeroMQ and msgpack can do the same: see the README's wire-protocol section.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np
import zmq

from .core import registry, wire
from .pipeline.defaults import DEFAULT_INGEST, DEFAULT_RESULTS, DEFAULT_WORK  # noqa: F401 (re-export)
from .pipeline.security import apply_client


class BackPressure(TimeoutError):
    """The pipeline did not accept a packet within the timeout (its bounded queues are full)."""


class Publisher:
    """PUSH socket to the sink's ingest endpoint; numbers packets 0, 1, 2, ... per stream.

    ``send`` blocks while the pipeline's bounded queues are full (back-pressure); pass
    ``timeout`` (seconds, 0 = never wait) to get :class:`BackPressure` instead.

    Acknowledged delivery: with ``results`` (the sink's PUB endpoint) the publisher keeps every packet
    until the sink's per-stream watermark (in its ``stats``) says it is durably persisted or rejected,
    re-sends whatever is not covered when the sink restarts (a new ``sink_id``) or when the watermark
    stalls for ``resend_after_s``, and blocks (back-pressure) while more than ``retain_bytes`` wait.
    A sink killed and restarted on the same ``--out`` then loses nothing and duplicates nothing.
    Without ``results`` (or with a raw PUSH socket) a packet is gone once sent: a sink crash loses
    what it held.

    ``instrument``: the name of the stream's instrument profile, sent in every packet; workers given
    that profile serve the stream with the bundle trained for it (see :mod:`streamer.core.profile`).
    """

    def __init__(self, endpoint: str = DEFAULT_INGEST, stream: str = "microscope", *, modality: str = registry.DEFAULT_MODALITY,
                 kind: str | None = None, first_seq: int = 0, hwm: int = 100, curve: str | Path | None = None,
                 context: zmq.Context | None = None, results: str | None = None, retain_bytes: int = 256 << 20,
                 resend_after_s: float = 5.0, instrument: str | None = None):
        if not stream or len(stream) > wire.MAX_STREAM_ID:
            raise ValueError(f"stream id must be 1-{wire.MAX_STREAM_ID} characters")
        self.stream = stream
        self.modality = modality
        self.kind = kind
        self.instrument = instrument  # the instrument profile's name, in every packet (see core.profile)
        self._spec = self._packet_kind(modality, kind)
        self.seq = first_seq
        self._curve = curve
        self._sock = (context or zmq.Context.instance()).socket(zmq.PUSH)
        self._sock.sndhwm = hwm
        apply_client(self._sock, curve)
        self._sock.connect(endpoint)
        self.results = results
        self._acks = Subscriber(results, topics=["stats"], curve=curve, context=context) if results else None
        self._retained: dict[int, bytes] = {}  # seq -> packet, oldest first (dicts keep insertion order)
        self._retained_bytes = 0
        self.retain_bytes = retain_bytes
        self.resend_after_s = resend_after_s
        self._sink_id: str | None = None
        self._ended = False
        self.watermark = first_seq
        self._t_progress = time.monotonic()
        self.resent = 0

    # ------------------------------------------------------------------ acknowledged delivery
    def _ack(self, msg: dict) -> dict:
        """Apply one stats message: forget covered packets; re-send after a sink restart."""
        sink_id = msg.get("sink_id")
        restarted = self._sink_id is not None and sink_id != self._sink_id
        self._sink_id = sink_id
        wm = msg.get("streams", {}).get(self.stream, {}).get("watermark")
        if isinstance(wm, int) and wm > self.watermark:
            self.watermark = wm
            self._t_progress = time.monotonic()
            for seq in [q for q in self._retained if q < wm]:
                self._retained_bytes -= len(self._retained.pop(seq))
        if restarted:
            self._resend()
        return msg

    def _resend(self) -> None:
        """Everything not covered by the watermark, in order (the sink drops what it already has)."""
        for raw in list(self._retained.values()):
            self._sock.send(raw, copy=len(raw) < 65536)
            self.resent += 1
        if self._ended:
            self._sock.send(wire.encode_end(self.stream, self.seq, self.modality))
        self._t_progress = time.monotonic()

    def poll_acks(self, wait_s: float = 0.0) -> dict | None:
        """Read pending stats (waiting up to ``wait_s`` for the first); the newest one, if any."""
        newest = None
        while (got := self._acks.recv(wait_s if newest is None else 0)) is not None:
            newest = self._ack(got[1])
        if self._retained and time.monotonic() - self._t_progress > self.resend_after_s:
            # no progress for a while: packets lost with a sink that restarted before its stats were
            # ever seen here, or a sink that lost them; the sink drops what it already has
            self._resend()
        return newest

    def _send_packet(self, seq: int, raw: bytes, timeout: float | None) -> None:
        if self._acks is None:
            self.send_raw(raw, timeout)
            return
        self._retained[seq] = raw
        self._retained_bytes += len(raw)
        self.send_raw(raw, timeout)
        self.poll_acks()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._retained_bytes > self.retain_bytes:  # back-pressure: wait for the sink to persist
            if deadline is not None and time.monotonic() > deadline:
                raise BackPressure(f"{self._retained_bytes} bytes wait for the sink's acknowledgement")
            self.poll_acks(0.05)

    @staticmethod
    def _packet_kind(modality: str, kind: str | None):
        """The declaration (arrays are cast to its dtypes), or None for a modality not installed here."""
        if not registry.known(modality):
            return None
        mod = registry.get(modality)
        spec = mod.packet_kind(kind) if kind else mod.packets[0]
        if spec is None:
            raise ValueError(f"{modality} has no packet kind {kind!r}")
        return spec

    def send_raw(self, raw: bytes, timeout: float | None = None) -> None:
        """Send an already encoded message (used by replay to pre-encode packets)."""
        if timeout is None:
            self._sock.send(raw, copy=len(raw) < 65536)
            return
        if timeout > 0 and not self._sock.poll(int(timeout * 1000), zmq.POLLOUT):
            raise BackPressure(f"pipeline did not accept a packet within {timeout} s")
        try:
            self._sock.send(raw, zmq.NOBLOCK, copy=len(raw) < 65536)
        except zmq.Again:
            raise BackPressure("pipeline queue full") from None

    def send(self, *tuple_args, modality: str | None = None, kind: str | None = None, t_acq: float | None = None,
             timeout: float | None = None, **fields) -> int:
        """Publish one packet; returns its seq.

        ``fields`` are the modality's wire keys (``streamer modalities`` lists them): arrays (numpy,
        cast to the declared dtype) and scalars; the item count (``n``) defaults to the first
        array's length. ``modality``/``kind`` default to the publisher's. Positional arguments
        mean the MINFLUX helper :meth:`send_tuples` (``send(counts, positions)``, as in v1).
        ``t_acq`` defaults to now.
        """
        if tuple_args:
            return self.send_tuples(*tuple_args, t_acq=t_acq, timeout=timeout, **fields)
        if modality is None or modality == self.modality:
            modality, kind = self.modality, kind or self.kind
        spec = self._spec if (modality, kind) == (self.modality, self.kind) else self._packet_kind(modality, kind)
        kind = kind or (spec.name if spec else None)
        if kind is None:
            raise ValueError(f"modality {modality!r} is not installed here: name the packet kind")
        arrays = {k: v for k, v in fields.items() if isinstance(v, np.ndarray)}
        head = {k: v for k, v in fields.items() if k not in arrays and v is not None}
        item_key = spec.item_key if spec else "n"
        if item_key not in head and arrays:
            head[item_key] = len(next(iter(arrays.values())))
        raw = wire.encode_packet(modality, kind, self.stream, self.seq, head, arrays, spec, t_acq,
                                 instrument=self.instrument)
        self._send_packet(self.seq, raw, timeout)
        self.seq += 1
        return self.seq - 1

    def send_tuples(self, counts: np.ndarray, positions: np.ndarray | None = None, *, centre: np.ndarray | None = None,
                    half_l: float | None = None, trace_id: np.ndarray | None = None, time_s: np.ndarray | None = None,
                    t_acq: float | None = None, timeout: float | None = None) -> int:
        """MINFLUX helper: one ``tuples`` packet; ``positions`` (n,2,3) nm or ``centre`` (n,2) + ``half_l``."""
        if centre is not None and half_l is None:
            half_l = 15.0  # the instrument's nominal L/2 (physics.HALF_L_NM)
        arrays = {"counts": np.asarray(counts), "positions": positions, "centre": centre, "trace_id": trace_id,
                  "time": time_s}
        return self.send(modality="minflux", t_acq=t_acq, timeout=timeout, half_l=half_l,
                         **{k: np.asarray(v) for k, v in arrays.items() if v is not None})

    def send_batch(self, batch, t_acq: float | None = None, timeout: float | None = None) -> int:
        """MINFLUX helper: a ``TupleBatch`` (positions in full; time / trace id only when known)."""
        has_time = not np.isnan(batch.time_s).all()
        has_trace = bool((batch.trace_id != -1).any())
        return self.send_tuples(batch.counts, batch.positions, trace_id=batch.trace_id if has_trace else None,
                                time_s=batch.time_s if has_time else None, t_acq=t_acq, timeout=timeout)

    def end(self, timeout: float | None = None) -> None:
        """Tell the sink this stream is complete after ``seq`` packets (lets it report tail gaps)."""
        self._ended = True
        self.send_raw(wire.encode_end(self.stream, self.seq, self.modality), timeout)

    def end_confirmed(self, results: str = DEFAULT_RESULTS, timeout: float = 60.0,
                      subscriber: "Subscriber | None" = None) -> dict:
        """Send the end marker and wait until the sink has released the whole stream.

        Closing a PUSH socket while packets still queue behind a paused sink (its window full)
        loses them despite ZMQ_LINGER (seen with libzmq 4.3.5), so a publisher that must not
        lose its tail waits for the sink's ``stats`` to report this stream ended: every packet
        before the marker has then been released (the sink sends stats at once when a stream
        ends). Pass a ``subscriber`` to ``stats`` opened when publishing started to skip the
        wait for the subscription to come up. Returns that stats message.
        """
        def ended(_t: str, m: dict) -> bool:
            st = m.get("streams", {}).get(self.stream, {})
            return bool(st.get("ended")) and st.get("next_seq", -1) >= self.seq

        if self._acks is not None:
            return self._end_acknowledged(timeout)
        sub = subscriber or Subscriber(results, topics=["stats"], curve=self._curve)
        try:
            # one stats message (periodic) proves the subscription is live before the marker can
            # be released (a SUB that joins late would miss the sink's final stats)
            # (the sink sends stats every 0.5 s: silence for 10 s means a wrong endpoint or no sink)
            if wait_for(sub, lambda _t, _m: True, min(timeout, 10.0)) is None:
                raise BackPressure(f"cannot confirm the end of stream {self.stream!r} (packets were sent): no "
                                   f"stats from the sink at {results} within {min(timeout, 10.0):g} s "
                                   "(is --results the sink's results endpoint?)")
            self.end()
            got = wait_for(sub, ended, timeout)
        finally:
            if subscriber is None:
                sub.close()
        if got is None:
            raise BackPressure(f"sink did not confirm the end of stream {self.stream!r} within {timeout} s")
        return got

    def _end_acknowledged(self, timeout: float) -> dict:
        """Acknowledged mode: end marker, then wait until the watermark covers every packet sent."""
        self.end()
        deadline = time.monotonic() + timeout
        while True:
            got = self.poll_acks(0.2)
            st = (got or {}).get("streams", {}).get(self.stream, {})
            if got is not None and self.watermark >= self.seq and st.get("ended"):
                return got
            if time.monotonic() > deadline:
                raise BackPressure(f"sink did not acknowledge stream {self.stream!r} within {timeout} s "
                                   f"(watermark {self.watermark} of {self.seq} packets)")

    def close(self, linger_s: float = 10.0) -> None:
        """Close; waits up to ``linger_s`` for queued packets to leave."""
        if self._acks is not None:
            self._acks.close()
        self._sock.close(linger=int(linger_s * 1000))

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Subscriber:
    """SUB socket on the sink's PUB: yields ``(topic, message)`` with results' arrays as numpy."""

    def __init__(self, endpoint: str = DEFAULT_RESULTS, topics: list[str] | tuple[str, ...] = ("result", "stats", "error"),
                 *, curve: str | Path | None = None, hwm: int = 10_000, context: zmq.Context | None = None):
        self._sock = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._sock.rcvhwm = hwm
        apply_client(self._sock, curve)
        for t in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self._sock.connect(endpoint)

    def recv(self, timeout: float | None = None) -> tuple[str, dict] | None:
        """Next message, or None after ``timeout`` seconds."""
        if timeout is not None and not self._sock.poll(int(timeout * 1000)):
            return None
        topic, payload = self._sock.recv_multipart()
        return topic.decode(), wire.decode_message(payload)

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        while True:
            msg = self.recv()
            if msg is not None:
                yield msg

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for(sub: Subscriber, predicate, timeout: float) -> dict | None:
    """First message for which ``predicate(topic, msg)`` holds within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        got = sub.recv(left)
        if got is not None and predicate(*got):
            return got[1]
    return None
