"""ZeroMQ SUB side of the monitor: drain the sink's PUB socket within a per-frame time budget.

The sink publishes ``[topic, payload]`` on PUB (see :mod:`streamer.schema`). PUB never blocks on a
slow subscriber: messages beyond the high-water marks (the sink's SNDHWM, our RCVHWM) are dropped
for this subscriber only. The monitor reads non-blocking within ``budget_s`` per GUI frame and
decodes the newest results first; what it cannot decode in time, or what ZeroMQ dropped at a
high-water mark, is counted as result seqs it never showed. That costs display frames, never
pipeline data. ZMQ_CONFLATE would keep only the newest message,
but it does not support multipart messages, so a small RCVHWM bounds the backlog instead.
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from .. import schema
from .model import MonitorModel

RCVMORE = zmq.RCVMORE

#: result columns handed to :meth:`MonitorModel.ingest` (schema key -> ingest argument)
_COLUMNS = {"distance": "distance", "lower": "lower", "upper": "upper", "flags": "flags",
            "trace_id": "trace_id", "time": "time_s"}


class ResultSubscriber:
    """SUB socket connected to a sink's PUB address; :meth:`drain` feeds a :class:`MonitorModel`."""

    def __init__(self, address: str, *, rcvhwm: int = 1000, rcvbuf: int = 512 << 10,
                 context: zmq.Context | None = None, clock=time.time) -> None:
        self.address = address
        self._ctx = context or zmq.Context.instance()
        self.socket = self._ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        # a fixed kernel receive buffer: autotuning would let tens of MB (seconds of results)
        # queue up in front of a monitor that cannot keep up
        self.socket.setsockopt(zmq.RCVBUF, rcvbuf)
        self.socket.setsockopt(zmq.LINGER, 0)
        for topic in (schema.TOPIC_RESULT, schema.TOPIC_STATS, schema.TOPIC_ERROR):
            self.socket.setsockopt(zmq.SUBSCRIBE, topic)
        self.socket.connect(address)
        self._clock = clock  # wall clock: t_acq on the wire is Unix time
        self.undecodable = 0  # payloads that failed to decode (counted, never raised into the GUI)

    def drain(self, model: MonitorModel, budget_s: float = 0.012, max_messages: int = 200_000) -> int:
        """Read everything queued (non-blocking), then decode the newest results that fit in ``budget_s``.

        Receiving is cheap (microseconds per message) and decoding is not, so a frame first empties
        the queue and then decodes newest-first: a monitor that falls behind skips older results
        (counted as not shown) instead of lagging further and further behind the acquisition.
        Results of one call are ingested as one block (one ring write per frame). Returns the
        number of messages received.
        """
        t0 = time.perf_counter()
        sock = self.socket
        payloads: list[bytes] = []
        read = 0
        # two plain recv calls cost ~1 us per message, recv_multipart ~4 us
        while read < max_messages and time.perf_counter() < t0 + budget_s:
            try:
                topic = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                # ZeroMQ's I/O thread moves at most RCVHWM messages into our queue at a time;
                # keep reading while more arrive, or the backlog (and the lag) would build upstream
                if sock.poll(1):
                    continue
                break
            read += 1
            # multipart messages arrive whole, so these recv calls never raise Again
            # getsockopt, not the .rcvmore attribute: pyzmq resolves attributes through an import
            # that PySide6's import hook makes ~20 us slow
            payload = sock.recv(zmq.NOBLOCK) if sock.getsockopt(RCVMORE) else None
            extra = 0
            while sock.getsockopt(RCVMORE):
                sock.recv(zmq.NOBLOCK)
                extra += 1
            if payload is None or extra:
                self.undecodable += 1  # not [topic, payload]
            elif topic == schema.TOPIC_RESULT:
                payloads.append(payload)
            else:
                self._note_other(model, topic, payload)
        deadline = max(t0 + budget_s, time.perf_counter() + budget_s / 4)
        blocks: list[schema.Result] = []
        for payload in reversed(payloads):  # newest first
            if blocks and time.perf_counter() >= deadline:
                break
            try:
                blocks.append(schema.decode_result(payload))
            except schema.PacketError:
                self.undecodable += 1
        blocks.reverse()
        for res in blocks:  # older skipped results show up as seq gaps: counted as not shown
            model.note_message(res.seq, res.model, res.stream)
        if blocks:
            self._ingest(model, blocks)
        return read

    def _note_other(self, model: MonitorModel, topic: bytes, payload: bytes) -> None:
        try:
            if topic == schema.TOPIC_STATS:
                model.note_stats(_stats_summary(schema.unpack(payload)))
            elif topic == schema.TOPIC_ERROR:
                err = schema.unpack(payload)
                model.note_error(f"{err.get('reason')}: {err.get('detail', '')}"[:120])
        except schema.PacketError:
            self.undecodable += 1

    def _ingest(self, model: MonitorModel, blocks: list[schema.Result]) -> None:
        cols: dict[str, np.ndarray] = {}
        for key, arg in _COLUMNS.items():
            if any(key in b.arrays for b in blocks):
                dtype, _ = schema.RESULT_ARRAYS[key]
                fill = -1 if key == "trace_id" else np.nan  # optional keys: unknown for senders without them
                cols[arg] = np.concatenate([b.arrays[key] if key in b.arrays else np.full(b.n, fill, dtype)
                                            for b in blocks])
        # display lag: age of the newest result this frame shows (acquisition -> on screen); older
        # results read in the same frame are not "late", the screen is as fresh as its newest data
        model.ingest(latency_s=np.array([self._clock() - blocks[-1].t_acq]), **cols)

    def close(self) -> None:
        self.socket.close(linger=0)


def _stats_summary(stats: dict) -> dict:
    """The sink statistics worth a line in the status panel (keys from :data:`schema.STATS_FIELDS`)."""
    out: dict = {}
    if isinstance(stats.get("rate_tuples_s"), (int, float)):
        out["tuples/s"] = float(stats["rate_tuples_s"])
    lat = stats.get("latency_ms")
    if isinstance(lat, dict):
        for q in ("p50", "p99"):
            if isinstance(lat.get(q), (int, float)):
                out[f"latency {q} ms"] = float(lat[q])
    for key in ("tuples", "gaps", "duplicates", "rejected", "resent", "workers"):
        if isinstance(stats.get(key), (int, float)):
            out[key] = stats[key]
    return out
