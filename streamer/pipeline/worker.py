"""A worker process: validate a packet, predict every tuple in one vectorized call, answer.

Protocol with the sink's ROUTER (the worker's DEALER; frames after the ROUTER identity):
  worker -> sink   HB <prefetch>            heartbeat every HEARTBEAT_S; announces how many jobs it may hold
                   DONE <job id> <result>   result message (schema ``result``); returns one credit
                   FAIL <job id> <error>    the packet was rejected (schema ``error``); returns one credit
                   BYE                      clean exit: the sink re-sends anything still assigned
  sink -> worker   JOB <job id> <packet>    job id: 8 bytes little-endian, packet: as published
                   PING                     liveness probe, ignored
A bad packet is answered with FAIL and the reason; an exception in the predictor too (reason
``worker-error``): nothing a publisher sends can stop a worker.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import time
import traceback
import uuid

import zmq

from .. import schema
from ..predictor import load_predictor
from ..schema import PacketError
from . import defaults
from .security import apply_client


def handle(predictor, raw: bytes, max_tuples: int, source: str) -> tuple[bytes, bytes]:
    """(b"DONE", result) or (b"FAIL", error) for one packet -- never raises."""
    stream = seq = n = None
    try:
        msg = schema.unpack(raw)
        stream, seq = msg.get("stream"), msg.get("seq")
        n = msg.get("n") if isinstance(msg.get("n"), int) else None
        packet = schema.validate_packet(msg, max_tuples)
    except PacketError as exc:
        return b"FAIL", schema.encode_error(exc.reason, exc.detail, stream=_s(stream), seq=_i(seq), n=n,
                                            source=source)
    try:
        return b"DONE", schema.encode_result(packet, predictor.predict(packet.batch))
    except Exception as exc:  # a predictor bug must cost one packet, not the worker
        detail = f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=3)}"
        return b"FAIL", schema.encode_error("worker-error", detail, stream=packet.stream, seq=packet.seq,
                                            n=len(packet.batch), source=source)


def _s(v):
    return v if isinstance(v, str) else None


def _i(v):
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def run_worker(endpoint: str = defaults.DEFAULT_WORK, predictor: str = defaults.DEFAULT_PREDICTOR, *,
               prefetch: int = defaults.PREFETCH, heartbeat_s: float = defaults.HEARTBEAT_S,
               max_tuples: int = schema.MAX_TUPLES, curve_dir: str | None = None, parent_pid: int | None = None,
               verbose: bool = False) -> int:
    """Serve jobs until SIGINT/SIGTERM; finishes the jobs it already received, then says BYE."""
    model = load_predictor(predictor)  # once: model loading is not on the per-packet path
    name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, name.encode())
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for a sink that is not connected
    apply_client(sock, curve_dir)
    sock.connect(endpoint)
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # a full collection walks the ~100k objects of numpy/zmq/the model (~50 ms here): keep them
    # out of the collector so a gen-2 pass cannot stall a packet
    gc.collect()
    gc.freeze()
    hb = [b"HB", str(prefetch).encode()]

    def send(frames: list[bytes], wait_ms: int = 0) -> bool:
        """Never block for long: with the sink gone, heartbeats are dropped and answers given up
        (the sink re-sends unanswered jobs), so SIGTERM always ends the worker."""
        if wait_ms and not sock.poll(wait_ms, zmq.POLLOUT):
            return False
        try:
            sock.send_multipart(frames, zmq.NOBLOCK, copy=len(frames[-1]) < 65536)
            return True
        except zmq.Again:
            return False

    send(hb)
    last_hb = time.monotonic()
    jobs = 0
    if verbose:
        print(f"worker {name}: {model.model_id} on {endpoint}", flush=True)
    while True:
        if sock.poll(0 if stop else int(heartbeat_s * 1000)):
            frames = sock.recv_multipart()
            if frames[0] == b"JOB" and len(frames) == 3:
                status, payload = handle(model, frames[2], max_tuples, name)
                send([status, frames[1], payload], wait_ms=1000)
                jobs += 1
        elif stop:
            break
        now = time.monotonic()
        if parent_pid and os.getppid() != parent_pid:  # the launcher died: do not linger as an orphan
            stop = True
        if now - last_hb >= heartbeat_s:
            send(hb)
            last_hb = now
    send([b"BYE"], wait_ms=200)
    sock.close(linger=500)
    ctx.term()
    if verbose:
        print(f"worker {name}: {jobs} jobs, bye", flush=True)
    return 0
