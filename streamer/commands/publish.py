"""``streamer publish``: replay a recording, or simulate a live acquisition, into the pipeline."""

from __future__ import annotations

import argparse

from ..pipeline import defaults
from ..pipeline.publisher import replay
from ..recording import load_recording
from ..simulate import simulate

HELP = "publish a replay file (or a fresh simulation) to the sink, as fast as possible or at a rate"


def add_arguments(p: argparse.ArgumentParser, with_endpoint: bool = True) -> None:
    p.add_argument("recording", nargs="?", help="replay file (.npz); omit with --simulate")
    p.add_argument("--simulate", choices=["static", "dynamic"], default=None,
                   help="simulate an acquisition instead of reading a file")
    p.add_argument("--traces", type=int, default=100, help="with --simulate: rulers/traces")
    p.add_argument("--tuples-per-trace", type=int, default=1000, help="with --simulate")
    p.add_argument("--seed", type=int, default=0, help="with --simulate")
    p.add_argument("--rate", type=float, default=None, help="tuples/s (default: as fast as possible)")
    p.add_argument("--packet-size", type=int, default=defaults.PACKET_SIZE, help="tuples per packet")
    p.add_argument("--repeat", type=int, default=1, help="replay the data this many times")
    if with_endpoint:
        p.add_argument("--ingest", default=defaults.DEFAULT_INGEST, help="the sink's ingest endpoint")
        p.add_argument("--stream", default="replay", help="stream id")
        p.add_argument("--curve", default=None, metavar="DIR", help="CurveZMQ key directory (client keys)")
        p.add_argument("--no-end", action="store_true", help="do not send the end-of-stream marker")
        p.add_argument("--results", default=defaults.DEFAULT_RESULTS,
                       help="the sink's results endpoint: wait there until the sink confirms the stream's end")
        p.add_argument("--no-confirm", action="store_true",
                       help="exit right after sending (packets still queued behind a busy sink may be lost)")


def load_source(args: argparse.Namespace):
    if (args.recording is None) == (args.simulate is None):
        raise ValueError("give a replay file or --simulate static|dynamic (not both)")
    if args.simulate:
        return simulate(args.simulate, args.traces, args.tuples_per_trace, args.seed)
    return load_recording(args.recording)


def run(args: argparse.Namespace) -> int:
    rec = load_source(args)
    sent = replay(rec, args.ingest, stream=args.stream, packet_size=args.packet_size, rate=args.rate,
                  repeat=args.repeat, curve_dir=args.curve, end=not args.no_end,
                  confirm=None if args.no_confirm else args.results)
    print(f"published {sent['tuples']:,} tuples in {sent['packets']:,} packets in {sent['elapsed_s']:.2f} s "
          f"({sent['send_rate_tuples_s']:,.0f} tuples/s)")
    return 0
