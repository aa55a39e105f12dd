"""ZeroMQ SUB side of the monitor: drain the sink's PUB socket within a per-frame time budget.

The sink publishes ``[topic, payload]`` on PUB (topics ``result``, ``stats``, ``error``; see
:mod:`streamer.core.wire`). PUB never blocks on a slow subscriber: messages beyond the high-water
marks (the sink's SNDHWM, our RCVHWM) are dropped for this subscriber only. The monitor reads
non-blocking within ``budget_s`` per GUI frame and decodes the newest results first; what it
cannot decode in time, or what ZeroMQ dropped at a high-water mark, is counted as result seqs it
never showed. That costs display frames, never pipeline data. ZMQ_CONFLATE would keep only the
newest message, but it does not support multipart messages, so a small RCVHWM bounds the backlog.

Results are self-describing (``layout``), so this module decodes every modality's results with
:func:`streamer.core.wire.decode_message` and knows none of them.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Protocol

import zmq

from ..core import wire

RCVMORE = zmq.RCVMORE


class Target(Protocol):
    """What a drain feeds (:class:`streamer.monitor.state.MonitorState`)."""

    def ingest_results(self, results: list[dict[str, Any]], lag_s: float | None = None) -> None: ...

    def note_stats(self, stats: Mapping[str, Any]) -> None: ...

    def note_error(self, error: Mapping[str, Any]) -> None: ...

    def note_undecodable(self, count: int = 1) -> None: ...


class ResultSubscriber:
    """SUB socket connected to a sink's PUB address; :meth:`drain` feeds a :class:`Target`."""

    def __init__(self, address: str, *, rcvhwm: int = 1000, rcvbuf: int = 512 << 10,
                 context: zmq.Context | None = None, clock=time.time) -> None:
        self.address = address
        self._ctx = context or zmq.Context.instance()
        self.socket = self._ctx.socket(zmq.SUB)
        try:
            self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
            # a fixed kernel receive buffer: autotuning would let tens of MB (seconds of results)
            # queue up in front of a monitor that cannot keep up
            self.socket.setsockopt(zmq.RCVBUF, rcvbuf)
            self.socket.setsockopt(zmq.LINGER, 0)
            for topic in (wire.TOPIC_RESULT, wire.TOPIC_STATS, wire.TOPIC_ERROR):
                self.socket.setsockopt(zmq.SUBSCRIBE, topic)
            self.socket.connect(address)
        except zmq.ZMQError:
            self.socket.close(linger=0)
            raise
        self._clock = clock  # wall clock: t_acq on the wire is Unix time
        self.undecodable = 0  # payloads that failed to decode (counted, never raised into the GUI)

    def drain(self, target: Target, budget_s: float = 0.012, max_messages: int = 200_000) -> int:
        """Read everything queued (non-blocking), then decode the newest results that fit in ``budget_s``.

        Receiving is cheap (microseconds per message) and decoding is not, so a frame first empties
        the queue and then decodes newest-first: a monitor that falls behind skips older results
        (counted as not shown) instead of lagging further and further behind the acquisition.
        Results of one call are handed over as one block (one view update per frame). Returns the
        number of messages received.
        """
        t0 = time.perf_counter()
        sock = self.socket
        payloads: list[bytes] = []
        read = bad = 0
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
                bad += 1  # not [topic, payload]
            elif topic == wire.TOPIC_RESULT:
                payloads.append(payload)
            elif not self._note_other(target, topic, payload):
                bad += 1
        deadline = max(t0 + budget_s, time.perf_counter() + budget_s / 4)
        blocks: list[dict[str, Any]] = []
        for payload in reversed(payloads):  # newest first
            if blocks and time.perf_counter() >= deadline:
                break
            try:
                res = wire.decode_message(payload)
            except wire.PacketError:
                bad += 1
                continue
            if res.get("kind") != "result":
                bad += 1
                continue
            blocks.append(res)
        blocks.reverse()  # older skipped results show up as seq gaps: counted as not shown
        if bad:
            self.undecodable += bad
            target.note_undecodable(bad)
        if blocks:
            # display lag: age of the newest result this frame shows (acquisition -> on screen); older
            # results read in the same frame are not "late", the screen is as fresh as its newest data
            t_acq = blocks[-1].get("t_acq")
            lag = self._clock() - t_acq if isinstance(t_acq, (int, float)) else None
            target.ingest_results(blocks, lag)
        return read

    @staticmethod
    def _note_other(target: Target, topic: bytes, payload: bytes) -> bool:
        try:
            msg = wire.unpack(payload)
        except wire.PacketError:
            return False
        if topic == wire.TOPIC_STATS:
            target.note_stats(msg)
        elif topic == wire.TOPIC_ERROR:
            target.note_error(msg)
        else:
            return False
        return True

    def close(self) -> None:
        self.socket.close(linger=0)
