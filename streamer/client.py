"""Small client API for microscope-control software: publish tuple packets, subscribe to results.

    from streamer.client import Publisher, Subscriber
    with Publisher("tcp://127.0.0.1:5555", stream="scope-1") as pub:
        pub.send(counts, positions)              # counts (n,2,3) uint16, positions (n,2,3) nm
        pub.send(counts, centre=c, half_l=15.0)  # or centre (n,2) + half the pattern size
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

from . import schema
from .physics import HALF_L_NM
from .pipeline.defaults import DEFAULT_INGEST, DEFAULT_RESULTS, DEFAULT_WORK  # noqa: F401 (re-export)
from .pipeline.security import apply_client
from .tuples import TupleBatch


class BackPressure(TimeoutError):
    """The pipeline did not accept a packet within the timeout (its bounded queues are full)."""


class Publisher:
    """PUSH socket to the sink's ingest endpoint; numbers packets 0, 1, 2, ... per stream.

    ``send`` blocks while the pipeline's bounded queues are full (back-pressure); pass
    ``timeout`` (seconds, 0 = never wait) to get :class:`BackPressure` instead.
    """

    def __init__(self, endpoint: str = DEFAULT_INGEST, stream: str = "microscope", *, first_seq: int = 0,
                 hwm: int = 100, curve: str | Path | None = None, context: zmq.Context | None = None):
        if not stream or len(stream) > schema.MAX_STREAM_ID:
            raise ValueError(f"stream id must be 1-{schema.MAX_STREAM_ID} characters")
        self.stream = stream
        self.seq = first_seq
        self._curve = curve
        self._sock = (context or zmq.Context.instance()).socket(zmq.PUSH)
        self._sock.sndhwm = hwm
        apply_client(self._sock, curve)
        self._sock.connect(endpoint)

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

    def send(self, counts: np.ndarray, positions: np.ndarray | None = None, *, centre: np.ndarray | None = None,
             half_l: float = HALF_L_NM, trace_id: np.ndarray | None = None, time_s: np.ndarray | None = None,
             t_acq: float | None = None, timeout: float | None = None) -> int:
        """Publish one packet; returns its seq. ``t_acq`` defaults to now (latency reference)."""
        raw = schema.encode_packet(self.stream, self.seq, counts, positions, centre=centre, half_l=half_l,
                                   trace_id=trace_id, time_s=time_s, t_acq=t_acq)
        self.send_raw(raw, timeout)
        self.seq += 1
        return self.seq - 1

    def send_batch(self, batch: TupleBatch, t_acq: float | None = None, timeout: float | None = None) -> int:
        self.send_raw(schema.encode_batch(self.stream, self.seq, batch, t_acq), timeout)
        self.seq += 1
        return self.seq - 1

    def end(self, timeout: float | None = None) -> None:
        """Tell the sink this stream is complete after ``seq`` packets (lets it report tail gaps)."""
        self.send_raw(schema.encode_end(self.stream, self.seq), timeout)

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
        return topic.decode(), schema.decode_message(payload)

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
