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
    """

    def __init__(self, endpoint: str = DEFAULT_INGEST, stream: str = "microscope", *, modality: str = registry.DEFAULT_MODALITY,
                 kind: str | None = None, first_seq: int = 0, hwm: int = 100, curve: str | Path | None = None,
                 context: zmq.Context | None = None):
        if not stream or len(stream) > wire.MAX_STREAM_ID:
            raise ValueError(f"stream id must be 1-{wire.MAX_STREAM_ID} characters")
        self.stream = stream
        self.modality = modality
        self.kind = kind
        self._spec = self._packet_kind(modality, kind)
        self.seq = first_seq
        self._curve = curve
        self._sock = (context or zmq.Context.instance()).socket(zmq.PUSH)
        self._sock.sndhwm = hwm
        apply_client(self._sock, curve)
        self._sock.connect(endpoint)

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
        raw = wire.encode_packet(modality, kind, self.stream, self.seq, head, arrays, spec, t_acq)
        self.send_raw(raw, timeout)
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

    def close(self, linger_s: float = 10.0) -> None:
        """Close; waits up to ``linger_s`` for queued packets to leave."""
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
