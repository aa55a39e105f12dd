"""The sink process: ingest + dispatcher + ordered, de-duplicated output.

Sockets (all bound by the sink; connectors can come and go):
  ingest  PULL    publishers PUSH ``tuples`` / ``end`` packets here
  work    ROUTER  workers (DEALER) ask for jobs with credits and answer with results or rejections
  results PUB     topics ``result`` (the worker's result message, forwarded as is), ``stats``, ``error``

The dispatcher lives in the sink because the component that knows what was delivered is the one
that decides what to re-send: acknowledgements are function calls and cannot be lost. Output is
released strictly in arrival order (= seq order per stream), at most ``window`` packets are held,
and the ingest socket is only read while there is room -- its high-water mark then blocks the
publishers (back-pressure end to end, bounded memory everywhere).

Exactly once across restarts: a (stream, seq) slot is taken only by a valid result (the
:class:`~.ledger.Ledger`; duplicates and conflicts are told apart by a content hash), results are
persisted durably (:class:`~.store.ResultStore`, recovered on start from the same ``--out``), and the
per-stream watermark in every ``stats`` message tells publishers what they may forget.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

from ..core import registry, wire
from ..core.wire import PacketError
from . import defaults
from .dispatcher import Dispatcher, Job
from .security import CurveServer, check_bind
from .stats import LatencyStats
from .archive import RawArchive
from .ledger import Ledger
from .store import ResultStore, recover as recover_store
from .tracker import SeqTracker

SWITCH_INTERVAL_S = 0.0002  #: GIL switch interval of the sink process (see Sink.run)


def _serves(frame: bytes) -> frozenset[str]:
    """The modalities a worker's heartbeat announces (msgpack {modality: predictor})."""
    served = msgpack.unpackb(frame, raw=False, max_map_len=256)
    if not isinstance(served, dict) or not all(isinstance(k, str) for k in served):
        raise ValueError(f"heartbeat announces {served!r}, not {{modality: predictor}}")
    return frozenset(served)


@dataclass
class _Done:
    kind: str  # "result" | "rejected"
    job: Job | None = None
    payload: bytes = b""
    result: wire.Result | None = None
    error: dict[str, Any] = field(default_factory=dict)


@dataclass
class _End:
    stream: str
    total: int


@dataclass
class SinkConfig:
    ingest: str = defaults.DEFAULT_INGEST
    work: str = defaults.DEFAULT_WORK
    results: str = defaults.DEFAULT_RESULTS
    out_dir: str | None = None
    archive_dir: str | None = None  # every accepted input packet, for reprocessing later
    flush_s: float = 1.0  # results reach the disk at most this long after release
    curve_dir: str | None = None
    window: int = defaults.WINDOW
    ingest_hwm: int = defaults.INGEST_HWM
    heartbeat_timeout: float = defaults.HEARTBEAT_TIMEOUT_S
    job_timeout: float = defaults.JOB_TIMEOUT_S
    max_deliveries: int = defaults.MAX_DELIVERIES
    max_packet_bytes: int = wire.MAX_PACKET_BYTES
    stats_interval: float = defaults.STATS_INTERVAL_S
    chunk_tuples: int = defaults.CHUNK_TUPLES
    exit_after_end: int = 0  # exit once this many streams ended and were drained (0: run until signalled)
    end_grace_s: float = 3.0  # ...and their watermark reached the end, or this long passed (seqs never sent)
    drain_timeout: float = 10.0  # on shutdown, wait this long for in-flight work
    summary_path: str | None = None
    report_interval: float = 0.0  # print a one-line status to stdout this often (0: never)
    parent_pid: int | None = None  # stop (drain) when this process is gone: launchers leave no orphans
    verbose: bool = False


class Sink:
    def __init__(self, cfg: SinkConfig):
        check_bind([cfg.ingest, cfg.work, cfg.results], cfg.curve_dir)
        self.cfg = cfg
        self.ctx = zmq.Context()
        self.curve = CurveServer(self.ctx, cfg.curve_dir) if cfg.curve_dir else None
        self.ingest = self._bind(zmq.PULL, cfg.ingest, rcvhwm=cfg.ingest_hwm)
        self.work = self._bind(zmq.ROUTER, cfg.work, router_mandatory=1, sndhwm=0, rcvhwm=0)
        self.pub = self._bind(zmq.PUB, cfg.results, sndhwm=100_000)
        # a worker whose connection drops (SIGKILL closes its socket) is probed at once, not after
        # the heartbeat timeout: a send to a vanished ROUTER peer fails with EHOSTUNREACH
        self.monitor = self.work.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.dispatcher = Dispatcher(cfg.heartbeat_timeout, cfg.job_timeout, cfg.max_deliveries)
        self.tracker = SeqTracker()
        self.ledger = Ledger()
        self.sink_id = os.urandom(6).hex()  # publishers re-send what is not covered when this changes
        self.recovered = 0
        if cfg.out_dir:  # a restart on the same --out continues where the last run's files end
            for stream, persisted in recover_store(cfg.out_dir).items():
                self.ledger.restore(stream, persisted)
                self.tracker.restore(stream, persisted)
                self.recovered += len(persisted)
        self.writer = ResultStore(cfg.out_dir, cfg.chunk_tuples, cfg.flush_s) if cfg.out_dir else None
        self.archive = RawArchive(cfg.archive_dir) if cfg.archive_dir else None
        self.conflicts_dir = Path(cfg.out_dir) / "conflicts" if cfg.out_dir else None
        self.latency = LatencyStats()
        self.order: deque[int | _End] = deque()
        self.done: dict[int, _Done] = {}
        # job ids start at a random offset: answers a worker still holds from a previous sink run
        # cannot be mistaken for this run's jobs
        self.next_job = int.from_bytes(os.urandom(5), "little") << 20
        self.packets = self.tuples = self.rejected = self.rejected_tuples = self.rejected_bytes = 0
        self.by_modality: dict[str, int] = {}
        self._ended: dict[str, tuple[int, float]] = {}  # stream -> (packets it announced, when)
        self.flagged: dict[str, int] = {}
        self._unserved_said: dict[str, float] = {}
        self._reasons = {**registry.reason_table(), "no-worker": ""}
        self.reasons: dict[str, int] = {}
        self.t_start = time.time()
        self.t_first: float | None = None
        self.t_last_release = 0.0
        self._interval_tuples = 0
        self._t_stats = time.monotonic()
        self._probe_at: list[float] = []
        self._stopping = False
        self._stop_deadline = 0.0
        self._t_report = time.monotonic()
        self._report_lat: list[float] = []

    def _bind(self, kind: int, endpoint: str, **opts: int) -> zmq.Socket:
        s = self.ctx.socket(kind)
        for k, v in opts.items():
            s.setsockopt(getattr(zmq, k.upper()), v)
        if self.curve:
            self.curve.apply(s)
        try:
            s.bind(endpoint)
        except zmq.ZMQError as exc:
            raise ValueError(f"cannot bind {endpoint}: {exc}") from None
        return s

    # ------------------------------------------------------------------ main loop
    def request_stop(self, *_: Any) -> None:
        if not self._stopping:
            self._stopping = True
            self._stop_deadline = time.monotonic() + self.cfg.drain_timeout

    def run(self) -> dict[str, Any]:
        # The result store's writer thread turns results into Parquet while this loop dispatches.
        # At the default 5 ms switch interval its Python parts (Arrow array per result column) held
        # the GIL for whole slices and the loop -- the pipeline's serial bottleneck -- stalled: durable
        # throughput was 0.80x of the same run without --out; at 0.2 ms, 0.85-0.88x (10M tuples,
        # alternating runs). A writer process instead cost more CPU than it saved on 2 cores (0.76-0.87x).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        gc.collect()
        gc.freeze()  # start-up objects out of the collector: no multi-ms gen-2 pauses mid-stream
        poller = zmq.Poller()
        poller.register(self.work, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        ingest_polled = False
        try:
            while True:
                now = time.monotonic()
                self._dispatch()
                want_ingest = not self._stopping and len(self.order) < self.cfg.window
                if want_ingest != ingest_polled:
                    (poller.register(self.ingest, zmq.POLLIN) if want_ingest else poller.unregister(self.ingest))
                    ingest_polled = want_ingest
                timeout = 50 if not self._probe_at else max(0, int((min(self._probe_at) - now) * 1000))
                events = dict(poller.poll(timeout))
                if self.work in events:
                    self._on_work()
                if self.ingest in events:
                    self._on_ingest()
                    self._dispatch()  # hand new packets out before the bookkeeping below
                if self.monitor in events:
                    self._on_monitor()
                self._release()
                self._housekeeping()
                if self._finished():
                    break
        finally:
            summary = self._close()
        return summary

    def _finished(self) -> bool:
        if self.order:
            if self._stopping and time.monotonic() > self._stop_deadline:
                print(f"sink: drain timeout, {len(self.order)} packets not released", flush=True)
                return True
            return False
        if self._stopping:
            return True
        if not self.cfg.exit_after_end or len(self._ended) < self.cfg.exit_after_end:
            return False
        # an acknowledged publisher re-sends what a restarted sink missed: wait for the watermark to
        # reach the end marker (or the grace time, for streams whose missing seqs were never sent)
        now = time.monotonic()
        return all(self.ledger.watermark(st) >= total or now - t > self.cfg.end_grace_s
                   for st, (total, t) in self._ended.items())

    # ------------------------------------------------------------------ ingest
    def _on_ingest(self, max_packets: int = 16) -> None:
        # a few at a time, so workers get the first packets while the rest are still being read
        for _ in range(max_packets):
            if len(self.order) >= self.cfg.window:
                return
            try:
                # no copy: the envelope is scanned in place and the packet forwarded as received
                raw = self.ingest.recv(zmq.NOBLOCK, copy=False).buffer
            except zmq.Again:
                return
            self._accept(raw)

    def _accept(self, raw: bytes | memoryview) -> None:
        """Read the envelope only: contents are the workers' (and their modality's) business."""
        stream = seq = modality = None
        try:
            if len(raw) > self.cfg.max_packet_bytes:
                raise PacketError("oversized", f"{len(raw)} bytes > {self.cfg.max_packet_bytes}")
            msg = wire.scan(raw)
            stream, seq = wire.header(msg)
            if msg.get("kind") == "end":
                if self.cfg.verbose:
                    print(f"sink: end of stream {stream!r} after {seq} packets", flush=True)
                self.order.append(_End(stream, seq))
                return
            env = wire.envelope(msg)
            modality = env.modality
            self._check_modality(env)
        except PacketError as exc:
            self._reject(exc.reason, exc.detail, stream, seq, None, "sink", modality, len(raw))
            return
        digest = wire.content_digest(msg)
        self.tracker.classify(stream, seq)  # gaps / late arrivals only: duplicates are the ledger's
        if not self.ledger.arrive(stream, seq, digest):
            return  # the same content is persisted or in flight: counted, never processed twice
        if self.archive:
            self.archive.append(raw, stream, seq, env.modality)
        job = Job(self.next_job, raw, stream, seq, env.modality, digest=digest)
        self.next_job += 1
        self.dispatcher.add(job)
        self.order.append(job.id)

    def _check_modality(self, env: wire.Envelope) -> None:
        """Unknown modality (not installed here, no worker serves it) or kind -> rejected now; a known
        one that no worker serves yet is held (see :meth:`_report_unserved`)."""
        served = self.dispatcher.served()
        if registry.known(env.modality):
            if registry.get(env.modality).packet_kind(env.kind) is None:
                raise PacketError("unknown-kind", f"{env.kind!r} is not a {env.modality} packet kind")
        elif served is not None and env.modality not in served:
            raise PacketError("unknown-modality", f"{env.modality!r}: installed here: "
                              f"{', '.join(registry.names())}; served by workers: {', '.join(sorted(served)) or 'none'}")

    # ------------------------------------------------------------------ workers
    def _dispatch(self) -> None:
        now = time.monotonic()
        while (assignment := self.dispatcher.assign(now)) is not None:
            identity, job = assignment
            try:
                self.work.send_multipart([identity, b"JOB", job.id.to_bytes(8, "little"), job.raw],
                                         copy=len(job.raw) < 65536)
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the worker is gone
                if self.cfg.verbose:
                    print(f"sink: worker {identity!r} unreachable ({exc}); re-queueing", flush=True)
                self._poisoned(self.dispatcher.unassign(identity, job))

    def _on_work(self) -> None:
        now = time.monotonic()
        for _ in range(1000):
            try:
                frames = self.work.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._worker_message(frames, now)
            except (IndexError, ValueError) as exc:  # a buggy peer must not take the sink down
                if self.cfg.verbose:
                    print(f"sink: malformed worker message ignored: {exc!r}", flush=True)

    def _worker_message(self, frames: list[bytes], now: float) -> None:
        identity, cmd = frames[0], frames[1]
        if cmd == b"HB":
            serves = _serves(frames[3]) if len(frames) > 3 else None
            if self.dispatcher.seen(identity, now, int(frames[2]), serves):
                self._publish_stats()  # a new worker: tell waiting launchers at once
        elif cmd in (b"DONE", b"FAIL"):
            self.dispatcher.seen(identity, now)
            job = self.dispatcher.complete(int.from_bytes(frames[2], "little"), identity)
            if job is not None:
                self.done[job.id] = self._answer(cmd, frames[3], job)
        elif cmd == b"BYE":
            self._poisoned(self.dispatcher.lost(identity))

    def _answer(self, cmd: bytes, payload: bytes, job: Job) -> _Done:
        try:
            if cmd == b"DONE":
                res = wire.decode_result(payload)
                if (res.stream, res.seq) != (job.stream, job.seq):
                    raise PacketError("worker-error", f"result for {res.stream}/{res.seq}, job {job.stream}/{job.seq}")
                return _Done("result", job, payload, res)
            err = wire.unpack(payload)
            return _Done("rejected", job, error=err)
        except PacketError as exc:
            return _Done("rejected", job, error={"reason": "worker-error", "detail": f"bad worker answer: {exc}",
                                            "stream": job.stream, "seq": job.seq, "source": "sink"})

    def _poisoned(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.done[job.id] = _Done("rejected", job, error={
                "reason": "redelivery-limit", "stream": job.stream, "seq": job.seq, "source": "sink",
                "detail": f"dispatched {job.deliveries} times, every worker holding it died or timed out"})

    def _on_monitor(self) -> None:
        while self.monitor.poll(0):
            recv_monitor_message(self.monitor)
            t = time.monotonic()
            self._probe_at += [t, t + 0.02, t + 0.1, t + 0.5]

    def _probe(self) -> None:
        """Send PING to every worker; ROUTER_MANDATORY makes a vanished one fail at once."""
        for identity in list(self.dispatcher.workers):
            try:
                self.work.send_multipart([identity, b"PING"], zmq.NOBLOCK)
            except zmq.ZMQError:
                if self.cfg.verbose:
                    print(f"sink: worker {identity!r} disconnected; re-sending its jobs", flush=True)
                self._poisoned(self.dispatcher.lost(identity))

    # ------------------------------------------------------------------ output
    def _release(self) -> None:
        now = time.time()
        while self.order:
            head = self.order[0]
            if isinstance(head, _End):
                self.tracker.end(head.stream, head.total)
                self._ended[head.stream] = (head.total, time.monotonic())
                self.order.popleft()
                self._publish_stats()  # publishers waiting for their end confirmation learn it now
                continue
            done = self.done.pop(head, None)
            if done is None:
                return
            self.order.popleft()
            job = done.job
            if done.kind == "rejected":
                e = done.error
                self._reject(e.get("reason", "worker-error"), e.get("detail", ""), e.get("stream"), e.get("seq"),
                             e.get("n"), e.get("source", ""), e.get("modality"), e.get("bytes"))
                self.ledger.rejected(job.stream, job.seq, job.digest)
                continue
            res = done.result
            verdict = self.ledger.result(job.stream, job.seq, job.digest)
            if verdict == "duplicate":
                continue
            if verdict == "conflict":
                self._conflict(job)
                continue
            self.pub.send_multipart([wire.TOPIC_RESULT, done.payload], copy=len(done.payload) < 65536)
            if self.writer:
                self.writer.add(res, now, job.digest)
            else:  # nothing to persist: released is final
                self.ledger.durable(job.stream, [job.seq])
            self.packets += 1
            self.tuples += res.n
            self.by_modality[res.modality] = self.by_modality.get(res.modality, 0) + res.n
            for reason, count in res.invalid.items():
                self.flagged[reason] = self.flagged.get(reason, 0) + count
            self._interval_tuples += res.n
            self.latency.add((now - res.t_acq) * 1e3)
            if self.t_first is None:
                self.t_first = now
            self.t_last_release = now

    def _conflict(self, job: Job) -> None:
        """Same (stream, seq) as a persisted result, different content, also valid: kept aside."""
        kept = None
        if self.conflicts_dir is not None:
            self.conflicts_dir.mkdir(parents=True, exist_ok=True)
            kept = self.conflicts_dir / f"{job.stream.replace('/', '_')}-{job.seq}-{job.digest.hex()}.msgpack"
            tmp = kept.with_suffix(".tmp")
            tmp.write_bytes(job.raw)
            tmp.replace(kept)
        detail = (f"seq {job.seq} of {job.stream!r} was already persisted with other content; this packet is "
                  + (f"kept in {kept}" if kept else "not persisted (no --out)"))
        payload = wire.encode_error("conflict", detail, stream=job.stream, seq=job.seq, source="sink",
                                    modality=job.modality, nbytes=len(job.raw))
        self.pub.send_multipart([wire.TOPIC_ERROR, payload])
        if self.writer:
            self.writer.add_error(wire.unpack(payload))

    def _reject(self, reason: str, detail: str, stream: str | None, seq: int | None, n: int | None,
                source: str, modality: str | None = None, nbytes: int | None = None) -> None:
        if reason not in self._reasons:
            detail, reason = f"{reason}: {detail}", "worker-error"
        self.rejected += 1
        self.rejected_tuples += n or 0
        self.rejected_bytes += nbytes or 0
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        payload = wire.encode_error(reason, detail, stream=stream, seq=seq, source=source, n=n,
                                    modality=modality, nbytes=nbytes)
        self.pub.send_multipart([wire.TOPIC_ERROR, payload])
        if self.writer:
            self.writer.add_error(wire.unpack(payload))
        if self.cfg.verbose:
            print(f"sink: rejected {stream}/{seq}: {reason} {detail}", flush=True)

    # ------------------------------------------------------------------ stats
    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self._probe_at and now >= min(self._probe_at):
            self._probe_at = [t for t in self._probe_at if t > now]
            self._probe()
        _, poison = self.dispatcher.expire(now)
        self._poisoned(poison)
        self._sync_durable()
        self._report_unserved(now)
        if now - self._t_stats >= self.cfg.stats_interval:
            if self.cfg.parent_pid and os.getppid() != self.cfg.parent_pid:
                self.request_stop()
            self._publish_stats()

    def _sync_durable(self) -> None:
        """Flush results that waited ``flush_s``; advance watermarks over what reached the disk."""
        if self.writer:
            self.writer.tick()
            for stream, seqs in self.writer.durable():
                self.ledger.durable(stream, seqs)
        if self.archive:
            self.archive.tick()

    def _report_unserved(self, now: float) -> None:
        """Packets of a modality no live worker serves are held, and said so on the error topic
        (reason ``no-worker``, not a rejection) when first seen and every 5 s while it lasts."""
        for modality, count in self.dispatcher.unserved().items():
            if now - self._unserved_said.get(modality, -1e9) >= 5.0:
                self._unserved_said[modality] = now
                payload = wire.encode_error("no-worker", f"{count} {modality} packets held: no live worker serves "
                                            f"{modality!r} (start one with --predictor {modality}:NAME)",
                                            modality=modality, n=count, source="sink")
                self.pub.send_multipart([wire.TOPIC_ERROR, payload])
                if self.cfg.verbose:
                    print(f"sink: {count} {modality} packets waiting for a worker that serves it", flush=True)

    def stats(self, final: bool = False) -> dict[str, Any]:
        now_m, now = time.monotonic(), time.time()
        dt = max(now_m - self._t_stats, 1e-9)
        span = (self.t_last_release - self.t_first) if self.t_first else 0.0
        d = self.dispatcher
        return {
            "uptime_s": now - self.t_start,
            "packets": self.packets, "tuples": self.tuples,
            "rate_tuples_s": self._interval_tuples / dt,
            "mean_rate_tuples_s": self.tuples / span if span > 0 else 0.0,
            "latency_ms": self.latency.overall() if final else self.latency.interval(),
            "sink_id": self.sink_id, "recovered": self.recovered,
            "gaps": self.tracker.gaps, "duplicates": self.ledger.duplicates, "conflicts": self.ledger.conflicts,
            "late": self.tracker.late,
            "items_by_modality": dict(self.by_modality), "flagged_items_by_reason": dict(self.flagged),
            "rejected": self.rejected, "rejected_tuples": self.rejected_tuples, "rejected_bytes": self.rejected_bytes,
            "rejected_by_reason": dict(self.reasons),
            "resent": d.resent, "redundant_answers": d.redundant, "workers_lost": d.workers_lost,
            "workers": len(d.workers), "in_flight": len(d.in_flight), "queued": d.queued(),
            "unserved": d.unserved(), "served": sorted(s) if (s := d.served()) is not None else None,
            "streams": {k: {**v, "watermark": self.ledger.watermark(k)} for k, v in self.tracker.summary().items()},
            "final": final,
        }

    def _publish_stats(self, final: bool = False) -> dict[str, Any]:
        st = self.stats(final)
        if self.cfg.report_interval:
            self._report(st)
        self._t_stats = time.monotonic()
        self._interval_tuples = 0
        self.pub.send_multipart([wire.TOPIC_STATS, wire.encode_stats(st)])
        return st

    def _report(self, st: dict[str, Any]) -> None:
        lat = st["latency_ms"]
        if lat.get("n"):
            self._report_lat.append(lat["p99"])
        now = time.monotonic()
        if now - self._t_report < self.cfg.report_interval and not st["final"]:
            return
        p99 = f"{max(self._report_lat):.2f} ms" if self._report_lat else "-"
        self._t_report, self._report_lat = now, []
        print(f"sink: {st['tuples']:,} tuples {st['rate_tuples_s']:,.0f}/s  worst p99 {p99}  "
              f"gaps {st['gaps']} dup {st['duplicates']} rejected {st['rejected']} re-sent {st['resent']}  "
              f"workers {st['workers']} in flight {st['in_flight']} queued {st['queued']}"
              + ("  (final)" if st["final"] else ""), flush=True)

    def _close(self) -> dict[str, Any]:
        if self.writer:
            self.writer.close()
            for stream, seqs in self.writer.durable():
                self.ledger.durable(stream, seqs)
        if self.archive:
            self.archive.close()
        summary = self._publish_stats(final=True)
        summary["results_dir"] = self.cfg.out_dir
        summary["cpu_s"] = time.process_time()  # this process, all threads (the result writer's too)
        if self.cfg.summary_path:
            tmp = Path(self.cfg.summary_path + ".tmp")
            tmp.write_text(json.dumps(summary, indent=1))
            tmp.rename(self.cfg.summary_path)
        time.sleep(0.05)  # let the final stats leave the PUB socket
        self.work.disable_monitor()
        for s in (self.monitor, self.ingest, self.work, self.pub):
            s.close(linger=200)
        if self.curve:
            self.curve.stop()
        self.ctx.term()
        return summary


def run_sink(cfg: SinkConfig) -> dict[str, Any]:
    """Run until SIGINT/SIGTERM (then drain) or until ``exit_after_end`` streams ended."""
    sink = Sink(cfg)
    signal.signal(signal.SIGINT, sink.request_stop)
    signal.signal(signal.SIGTERM, sink.request_stop)
    return sink.run()
