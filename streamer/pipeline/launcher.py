"""Start a whole local pipeline (sink + N workers as processes, publisher in this process).

:func:`run_local_pipeline` is the programmatic entry point (benchmarks, ``streamer run``, ``streamer
demo``): it replays a recording and returns the sink's final summary dict. :class:`LocalPipeline`
exposes the processes (tests SIGKILL a worker through it). Every process is started with a
timeout and is terminated, then killed, on exit: no orphans.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..client import Subscriber, wait_for
from ..core import recording as recording_mod
from ..core.recording import Recording
from . import defaults
from .publisher import replay
from .worker import parse_serves


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamer.cli", *args]


class LocalPipeline:
    """Sink + workers as subprocesses on ipc endpoints in a private temp dir (or given endpoints)."""

    def __init__(self, workers: int = 2, predictor: str | list[str] = defaults.DEFAULT_PREDICTOR, *,
                 out_dir: str | None = None,
                 endpoints: dict[str, str] | None = None, exit_after_end: int = 1, sink_args: list[str] = (),
                 worker_args: list[str] = (), quiet: bool = True):
        if workers < 1:
            raise ValueError("need at least one worker")
        # "[modality:]name", or a list of them for workers serving several modalities;
        # checked here (clear error), not after the workers die one by one
        self.predictors = [predictor] if isinstance(predictor, str) else list(predictor)
        parse_serves(self.predictors)
        self._tmp = tempfile.mkdtemp(prefix="streamer-")  # short path: ipc paths are limited to ~100 chars
        self.endpoints = endpoints or {k: f"ipc://{self._tmp}/{k}" for k in ("ingest", "work", "results")}
        self.summary_path = os.path.join(self._tmp, "summary.json")
        self.n_workers = workers
        self.predictor = predictor
        self.out_dir = out_dir
        self.exit_after_end = exit_after_end
        self.sink_args = list(sink_args)
        self.worker_args = list(worker_args)
        self.out = subprocess.DEVNULL if quiet else None
        self.sink: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def _sink_command(self) -> list[str]:
        e = self.endpoints
        args = ["sink", "--ingest", e["ingest"], "--work", e["work"], "--results", e["results"],
                "--summary", self.summary_path, "--exit-after-end", str(self.exit_after_end),
                "--parent-pid", str(os.getpid()), *self.sink_args]
        if self.out_dir:
            args += ["--out", self.out_dir]
        return _cli(*args)

    def restart_sink(self, sig: int = signal.SIGKILL) -> subprocess.Popen:
        """Failure injection: kill the sink (SIGKILL by default) and start a new one on the same
        endpoints and ``--out`` (workers and publishers reconnect by themselves)."""
        self.sink.send_signal(sig)
        self.sink.wait(10)
        self.sink = subprocess.Popen(self._sink_command(), stdout=self.out, stderr=self.out)
        return self.sink

    def start(self, ready_timeout: float = 60.0) -> "LocalPipeline":
        e = self.endpoints
        sub = Subscriber(e["results"], topics=["stats"])
        try:
            self.sink = subprocess.Popen(self._sink_command(), stdout=self.out, stderr=self.out)
            for _ in range(self.n_workers):
                self.add_worker()
            # publishing before the workers are up would put their start-up into the latency numbers
            def died() -> bool:
                return any(p.poll() is not None for p in [self.sink, *self.workers])

            got = wait_for(sub, lambda t, m: m.get("workers", 0) >= self.n_workers or died(), ready_timeout)
            if got is None or died():
                codes = [p.poll() for p in [self.sink, *self.workers]]
                raise RuntimeError(f"pipeline not ready within {ready_timeout} s (exit codes sink, workers: {codes}; "
                                   "run with -v to see their output)")
        except BaseException:
            self.stop()
            raise
        finally:
            sub.close()
        return self

    def add_worker(self) -> subprocess.Popen:
        serve = [a for spec in self.predictors for a in ("--predictor", spec)]
        p = subprocess.Popen(_cli("worker", "--work", self.endpoints["work"], *serve,
                                  "--parent-pid", str(os.getpid()), *self.worker_args), stdout=self.out, stderr=self.out)
        self.workers.append(p)
        return p

    def kill_worker(self, i: int = 0) -> None:
        """SIGKILL worker ``i`` (failure injection)."""
        self.workers[i].send_signal(signal.SIGKILL)
        self.workers[i].wait(10)

    def wait(self, timeout: float = 300.0) -> dict[str, Any]:
        """Wait for the sink to finish (it exits after ``exit_after_end`` streams) and return its summary."""
        try:
            code = self.sink.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"sink did not finish within {timeout} s") from None
        if code != 0 or not os.path.exists(self.summary_path):
            raise RuntimeError(f"sink exited with code {code}")
        return json.loads(Path(self.summary_path).read_text())

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM everything (sink drains, workers finish their jobs), then SIGKILL what is left."""
        procs = [p for p in [self.sink, *self.workers] if p is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "LocalPipeline":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_local_pipeline(source: Recording | str | os.PathLike, *, workers: int = 2,
                       predictor: str | list[str] | None = None, packet_size: int = defaults.PACKET_SIZE,
                       rate: float | None = None, repeat: int = 1, out_dir: str | None = None,
                       timeout: float = 300.0, sink_args: list[str] = (), worker_args: list[str] = (),
                       quiet: bool = True) -> dict[str, Any]:
    """Replay ``source`` through sink + ``workers`` worker processes; the sink's final summary.

    The summary has the keys of a ``stats`` message (see :data:`streamer.pipeline.stats.STATS_FIELDS`) with
    overall latency percentiles, plus ``publisher`` (what was sent) and ``wall_s``. ``predictor``:
    ``[modality:]name`` (or a list); default: the recording's modality's default predictor.
    """
    if isinstance(source, (str, os.PathLike)):
        source = recording_mod.load_recording(source)
    rec = source.to_core() if hasattr(source, "to_core") else source  # a modality's own recording type
    predictor = predictor or f"{rec.modality}:"  # the modality's default predictor
    with LocalPipeline(workers, predictor, out_dir=out_dir, sink_args=sink_args, worker_args=worker_args,
                       quiet=quiet) as pipe:
        t0 = time.perf_counter()
        sent = replay(rec, pipe.endpoints["ingest"], packet_size=packet_size, rate=rate, repeat=repeat,
                      confirm=pipe.endpoints["results"], confirm_timeout=timeout)
        summary = pipe.wait(timeout)
        summary["wall_s"] = time.perf_counter() - t0
    summary["publisher"] = sent
    summary["predictor"] = predictor
    summary["workers_started"] = workers
    summary["packet_size"] = packet_size
    return summary
