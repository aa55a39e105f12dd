"""``streamer sink``: ingest, dispatch to workers, reorder/dedupe, persist and republish results."""

from __future__ import annotations

import argparse
import json

from ..core import wire
from ..pipeline import defaults
from ..pipeline.sink import SinkConfig, run_sink

HELP = "run the sink: ingest packets, dispatch to workers, persist + republish ordered results"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ingest", default=defaults.DEFAULT_INGEST, help="PULL endpoint publishers push to")
    p.add_argument("--work", default=defaults.DEFAULT_WORK, help="ROUTER endpoint workers connect to")
    p.add_argument("--results", default=defaults.DEFAULT_RESULTS, help="PUB endpoint: result/stats/error")
    p.add_argument("--out", default=None,
                   help="results directory (Parquet per modality/stream, errors.jsonl); a restarted sink continues it")
    p.add_argument("--archive", default=None, metavar="DIR",
                   help="also keep every accepted input packet here (append-only log + index) for reprocessing")
    p.add_argument("--flush", type=float, default=1.0, metavar="S",
                   help="results reach the disk at most this many seconds after release (default 1)")
    p.add_argument("--curve", default=None, metavar="DIR",
                   help="CurveZMQ key directory (`streamer keys DIR`); required to bind a non-loopback address")
    p.add_argument("--window", type=int, default=defaults.WINDOW, help="packets held before ingest pauses")
    p.add_argument("--ingest-hwm", type=int, default=defaults.INGEST_HWM)
    p.add_argument("--heartbeat-timeout", type=float, default=defaults.HEARTBEAT_TIMEOUT_S)
    p.add_argument("--job-timeout", type=float, default=defaults.JOB_TIMEOUT_S)
    p.add_argument("--max-deliveries", type=int, default=defaults.MAX_DELIVERIES)
    p.add_argument("--max-packet-bytes", type=int, default=wire.MAX_PACKET_BYTES)
    p.add_argument("--stats-interval", type=float, default=defaults.STATS_INTERVAL_S)
    p.add_argument("--chunk-items", "--chunk-tuples", dest="chunk_tuples", type=int, default=defaults.CHUNK_TUPLES,
                   help="items (+ detections) per persisted chunk")
    p.add_argument("--exit-after-end", type=int, default=0,
                   help="exit after N streams sent their end marker and were drained (0: until SIGINT/SIGTERM)")
    p.add_argument("--drain-timeout", type=float, default=10.0)
    p.add_argument("--report", type=float, default=5.0, help="print a status line every N s (0: never)")
    p.add_argument("--summary", default=None, help="write the final summary as JSON here")
    p.add_argument("--parent-pid", type=int, default=None, help="drain and exit when this parent process is gone")
    p.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    # an ingest HWM of 2 stalled a paused-then-resumed PULL in our tests (libzmq 4.3.5): keep >= 4
    if args.window < 1 or args.ingest_hwm < 4:
        raise ValueError("--window must be >= 1 and --ingest-hwm >= 4")
    if args.flush <= 0:
        raise ValueError("--flush must be > 0 seconds")
    cfg = SinkConfig(ingest=args.ingest, work=args.work, results=args.results, out_dir=args.out,
                     archive_dir=args.archive, flush_s=args.flush,
                     curve_dir=args.curve, window=args.window, ingest_hwm=args.ingest_hwm,
                     heartbeat_timeout=args.heartbeat_timeout, job_timeout=args.job_timeout,
                     max_deliveries=args.max_deliveries, max_packet_bytes=args.max_packet_bytes,
                     stats_interval=args.stats_interval, chunk_tuples=args.chunk_tuples,
                     exit_after_end=args.exit_after_end, drain_timeout=args.drain_timeout,
                     summary_path=args.summary, report_interval=args.report,
                     parent_pid=args.parent_pid,
                     verbose=args.verbose)
    summary = run_sink(cfg)
    if args.verbose:
        print(json.dumps(summary, indent=1))
    return 0
