"""A worker process: validate a packet against its modality, predict every item in one vectorized call, answer.

Protocol with the sink's ROUTER (the worker's DEALER; frames after the ROUTER identity):
  worker -> sink   HB <prefetch> <serves>   heartbeat every HEARTBEAT_S; announces how many jobs it may hold
                                            and (msgpack {modality: predictor}) what it serves
                   DONE <job id> <result>   result message (self-describing, see core.wire); returns one credit
                   FAIL <job id> <error>    the packet was rejected (``error`` message); returns one credit
                   BYE                      clean exit: the sink re-sends anything still assigned
  sink -> worker   JOB <job id> <packet>    job id: 8 bytes little-endian, packet: as published
                   PING                     liveness probe, ignored
A bad packet is answered with FAIL and the reason; an exception in the predictor too (reason
``worker-error``): nothing a publisher sends can stop a worker. Modalities and predictors are
looked up in the registry (:mod:`streamer.core.registry`), never imported by name.
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

from ..core import registry, wire
from ..core.modality import Modality, Predictor
from ..core.profile import InstrumentProfile, mark_mismatch
from ..core.wire import PacketError, safe_int, safe_str
from . import defaults
from .instruments import Instruments
from .security import apply_client


def parse_serves(specs: list[str] | tuple[str, ...], default_modality: str = registry.DEFAULT_MODALITY) -> dict[str, str]:
    """``["static", "electron:trees"]`` -> {modality: predictor}; an unqualified name belongs to
    ``default_modality``; ``"electron:"`` means that modality's default predictor."""
    serves: dict[str, str] = {}
    for spec in specs:
        modality, sep, name = spec.partition(":") if ":" in spec else (default_modality, "", spec)
        mod = registry.get(modality)
        name = name or mod.default_predictor
        mod.predictor(name)  # clear error for an unknown name, before any process starts
        if modality in serves and serves[modality] != name:
            raise ValueError(f"two predictors for {modality}: {serves[modality]!r} and {name!r}")
        serves[modality] = name
    return serves


class Served:
    """The modalities a worker serves, each with its loaded predictor, and the instrument profiles it
    knows (each served by the bundle trained for it, see :mod:`.instruments`)."""

    def __init__(self, serves: dict[str, str], profiles: list[InstrumentProfile] = (), models_dir=None):
        self.names = dict(serves)
        self.modalities: dict[str, Modality] = {m: registry.get(m) for m in serves}
        # once: model loading is not on the per-packet path
        self.predictors: dict[str, Predictor] = {m: self.modalities[m].predictor(p).factory()
                                                 for m, p in serves.items()}
        self.instruments = Instruments(self.modalities, self.predictors, self.names, list(profiles), models_dir)

    def model_ids(self) -> str:
        return ", ".join([f"{m}:{p.model_id}" for m, p in self.predictors.items()] + self.instruments.loaded)


def handle(served: Served, raw: bytes, max_items: int | None, source: str) -> tuple[bytes, bytes]:
    """(b"DONE", result) or (b"FAIL", error) for one packet -- never raises."""
    stream = seq = n = modality = None
    try:
        msg = wire.scan(raw)  # arrays stay views into the received frame
        stream, seq, modality = msg.get("stream"), msg.get("seq"), msg.get("modality")
        n = safe_int(msg.get("n"))
        env = wire.envelope(msg)
        modality = env.modality
        mod = served.modalities.get(env.modality)
        if mod is None:
            raise PacketError("unknown-modality", f"{env.modality!r}: this worker serves {', '.join(served.modalities)}")
        if max_items is not None and n is not None and n > max_items:
            raise PacketError("oversized", f"n={n} > {max_items}")
        packet = wire.decode_packet(msg, mod)
    except PacketError as exc:
        return b"FAIL", wire.encode_error(exc.reason, exc.detail, stream=safe_str(stream), seq=safe_int(seq), n=n,
                                          source=source, modality=safe_str(modality), nbytes=len(raw))
    try:
        route = served.instruments.route(packet)
        out = route.predictor.predict(packet)
        if route.reason:  # outside what this model covers: estimates kept, intervals dropped, flagged
            count = mark_mismatch(out, mod.results, packet.n, len(out["item"]) if "item" in out else None)
            packet.invalid_reasons[route.reason] = packet.invalid_reasons.get(route.reason, 0) + count
        return b"DONE", wire.encode_result(packet, mod.results, out, route.predictor.model_id)
    except Exception as exc:  # a predictor bug must cost one packet, not the worker
        detail = f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=3)}"
        return b"FAIL", wire.encode_error("worker-error", detail, stream=packet.stream, seq=packet.seq, n=packet.n,
                                          source=source, modality=packet.modality, nbytes=len(raw))


def serve_raw(served: Served, raw: bytes) -> wire.Result:
    """One packet through the worker's own path, in process (benches, tests): the decoded result, or
    a PacketError with the reason the worker would have answered."""
    status, payload = handle(served, raw, None, "in-process")
    if status != b"DONE":
        err = wire.unpack(payload)
        raise PacketError(err.get("reason", "worker-error"), err.get("detail", ""))
    return wire.decode_result(payload)


def run_worker(endpoint: str = defaults.DEFAULT_WORK, serves: dict[str, str] | None = None, *,
               prefetch: int = defaults.PREFETCH, heartbeat_s: float = defaults.HEARTBEAT_S,
               max_items: int | None = None, curve_dir: str | None = None, parent_pid: int | None = None,
               profiles: list[InstrumentProfile] = (), models_dir=None, verbose: bool = False) -> int:
    """Serve jobs until SIGINT/SIGTERM; finishes the jobs it already received, then says BYE.

    ``serves``: {modality: predictor name} (default: MINFLUX's default predictor)."""
    served = Served(serves or parse_serves([defaults.DEFAULT_PREDICTOR]), profiles, models_dir)
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
    hb = [b"HB", str(prefetch).encode(), wire.pack(served.names)]

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
        print(f"worker {name}: {served.model_ids()} on {endpoint}", flush=True)
    while True:
        if sock.poll(0 if stop else int(heartbeat_s * 1000)):
            frames = sock.recv_multipart()
            if frames[0] == b"JOB" and len(frames) == 3:
                status, payload = handle(served, frames[2], max_items, name)
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
