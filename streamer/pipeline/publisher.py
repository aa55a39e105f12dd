"""Replay a recording of any modality into the pipeline, as fast as possible or at a rate."""

from __future__ import annotations

import time
from typing import Any

import zmq

from ..client import Publisher
from ..core.recording import Recording, packet_slices
from . import defaults


def replay(rec: Recording, endpoint: str = defaults.DEFAULT_INGEST, *, stream: str = "replay",
           packet_size: int = defaults.PACKET_SIZE, rate: float | None = None, repeat: int = 1,
           curve_dir: str | None = None, end: bool = True, confirm: str | None = None,
           confirm_timeout: float = 300.0, context: zmq.Context | None = None) -> dict[str, Any]:
    """Send ``rec`` in packets of ``packet_size`` items, ``repeat`` times; returns what was sent.

    ``confirm`` (the sink's results endpoint) turns on acknowledged delivery: every packet is kept
    until the sink's watermark covers it (re-sent if the sink restarts), and the function returns
    once the whole stream is durably persisted (see :class:`Publisher`); without it, packets still
    queued behind a paused sink, or held by a sink that crashes, can be lost.

    ``rate`` (items/s) paces packets on a fixed schedule like a live acquisition (``t_acq`` is the
    send time, so sink latency excludes schedule slip); None sends as fast as back-pressure allows.
    """
    if packet_size < 1:
        raise ValueError("packet size must be >= 1")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0 tuples/s")
    if hasattr(rec, "to_core"):  # a modality's own recording type (e.g. MINFLUX's TupleBatch form)
        rec = rec.to_core()
    n = len(rec)
    if n == 0:
        raise ValueError("recording is empty")
    sent_tuples = packets = 0
    max_behind = 0.0
    # with confirm: acknowledged delivery (packets kept until the sink's watermark covers them,
    # re-sent after a sink restart); the subscription is opened now, so the end needs no round trip
    acks = confirm if (end and confirm) else None
    with Publisher(endpoint, stream, modality=rec.modality, kind=rec.kind, curve=curve_dir, context=context,
                   results=acks) as pub:
        t0 = time.perf_counter()
        for _ in range(repeat):
            for sl in packet_slices(n, packet_size):
                if rate is not None:
                    due = t0 + sent_tuples / rate
                    wait = due - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    else:
                        max_behind = max(max_behind, -wait)
                pub.send(**rec.header, **{k: v[sl] for k, v in rec.arrays.items()})
                packets += 1
                sent_tuples += sl.stop - sl.start
        elapsed = time.perf_counter() - t0
        if acks is not None:
            pub.end_confirmed(confirm, confirm_timeout)
        elif end:
            pub.end()
    return {"packets": packets, "tuples": sent_tuples, "elapsed_s": elapsed, "resent": pub.resent,
            "send_rate_tuples_s": sent_tuples / elapsed if elapsed > 0 else float("inf"),
            "max_behind_schedule_s": max_behind}
