"""``streamer reprocess SOURCE --out DIR``: an archive or replay file through the predictors on Dask."""

from __future__ import annotations

import argparse

HELP = ("reprocess a raw archive (sink --archive) or a replay file on dask.distributed (a LocalCluster, or "
        "--scheduler ADDRESS) with the live workers' predictors; writes the sink's Parquet layout")
MODALITY_AWARE = True


def add_arguments(p: argparse.ArgumentParser, modality) -> None:
    p.add_argument("source", help="archive directory (streamer sink --archive) or replay file (.npz)")
    p.add_argument("--out", required=True, help="results directory (same layout as the sink's --out)")
    p.add_argument("--predictor", action="append", default=None, metavar="[MODALITY:]NAME",
                   help="predictor(s) to run, repeatable (default: each modality's default predictor)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing Dask scheduler (tcp://host:8786); default: a LocalCluster on this machine")
    p.add_argument("-w", "--workers", type=int, default=2, help="LocalCluster worker processes (1 thread each)")
    p.add_argument("--packets-per-task", type=int, default=64)
    p.add_argument("--packet-size", type=int, default=None, help="replay files: items per packet (default 1000)")
    p.add_argument("--stream", default="replay", help="replay files: the stream id to give the packets")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(_modality_obj=modality)


def run(args: argparse.Namespace) -> int:
    from ..pipeline.reprocess import reprocess

    s = reprocess(args.source, args.out, args.predictor, default_modality=args.modality, scheduler=args.scheduler,
                  workers=args.workers, packets_per_task=args.packets_per_task, packet_size=args.packet_size or 1000,
                  stream=args.stream, progress=not args.no_progress)
    print(f"reprocessed {s['items']:,} items in {s['packets']:,} packets ({s['tasks']} tasks, {', '.join(s['serves'])}) "
          f"in {s['wall_s']:.1f} s = {s['items'] / s['wall_s']:,.0f} items/s"
          f"{'; rejected ' + str(s['rejected_by_reason']) if s['rejected_by_reason'] else ''} -> {args.out}")
    return 0
