"""``streamer publish``: replay a recording, or simulate a live acquisition, into the pipeline."""

from __future__ import annotations

import argparse

from ..pipeline import defaults
from ..pipeline.publisher import replay
from . import simulation

HELP = "publish a replay file (or a fresh simulation) to the sink, as fast as possible or at a rate"
MODALITY_AWARE = True


def add_arguments(p: argparse.ArgumentParser, modality, with_endpoint: bool = True) -> None:
    p.add_argument("recording", nargs="?", help="replay file (.npz); omit with --simulate")
    p.add_argument("--simulate", nargs="?", const=True, default=None, metavar="PRESET",
                   help="simulate an acquisition instead of reading a file (MINFLUX presets: static, dynamic); "
                        "the simulation options below apply")
    p.add_argument("--rate", type=float, default=None, help="items/s (default: as fast as possible)")
    p.add_argument("--packet-size", type=int, default=defaults.PACKET_SIZE, help="items (tuples, frames, stacks) per packet")
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
    simulation.add_options(p, modality)


def load_source(args: argparse.Namespace):
    """The recording to replay (generic form): a file, or the modality's simulator."""
    if (args.recording is None) == (args.simulate is None):
        raise ValueError("give a replay file or --simulate (not both)")
    cmds = args._modality_obj.commands
    if args.simulate is not None:
        return simulation.simulate(args)
    if hasattr(cmds, "load"):  # the modality reads its own older layouts too
        return cmds.load(args.recording)
    from ..core.recording import load_recording

    rec = load_recording(args.recording)
    if rec.modality != args.modality:
        raise ValueError(f"{args.recording} is a {rec.modality} recording; pass --modality {rec.modality}")
    return rec


def run(args: argparse.Namespace) -> int:
    rec = load_source(args)
    sent = replay(rec, args.ingest, stream=args.stream, packet_size=args.packet_size, rate=args.rate,
                  repeat=args.repeat, curve_dir=args.curve, end=not args.no_end,
                  confirm=None if args.no_confirm else args.results)
    print(f"published {sent['tuples']:,} {rec.kind} items in {sent['packets']:,} packets in {sent['elapsed_s']:.2f} s "
          f"({sent['send_rate_tuples_s']:,.0f} items/s)")
    return 0
