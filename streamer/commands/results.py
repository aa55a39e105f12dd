"""``streamer results PATH``: what a results directory holds (any modality, either layout), or a table file."""

from __future__ import annotations

import argparse

import numpy as np

HELP = "summarize a results directory (per modality and stream); --csv/--parquet export one modality via pandas"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a sink's --out directory")
    p.add_argument("--only", default=None, metavar="MODALITY", help="only this modality (default: all present)")
    p.add_argument("--csv", default=None, metavar="FILE", help="write the per-item table of --only as CSV")
    p.add_argument("--parquet", default=None, metavar="FILE", help="write the per-item table of --only as one Parquet file")


def to_pandas(results: dict[str, np.ndarray], table: str = "items"):
    """One table of :func:`load_results`' columns as a pandas DataFrame (tail dims become list cells)."""
    import pandas as pd

    if table == "items":
        cols = {k: v for k, v in results.items() if not k.startswith(("det_", "packet_"))}
    else:
        prefix = "det_" if table == "detections" else "packet_"
        cols = {k[len(prefix):]: v for k, v in results.items() if k.startswith(prefix)}
    return pd.DataFrame({k: (list(v) if v.ndim > 1 else v) for k, v in cols.items()})


def run(args: argparse.Namespace) -> int:
    from ..core import registry
    from ..pipeline.results import load_results, result_modalities

    present = result_modalities(args.path)
    if not present:
        raise FileNotFoundError(f"no results in {args.path}")
    for modality in [args.only] if args.only else present:
        res = load_results(args.path, modality)
        streams, counts = np.unique(res["packet_stream"].astype(str), return_counts=True)
        streams = [str(s) for s in streams]
        items = len(res["seq"])
        dets = len(res.get("det_seq", ()))
        noun = registry.get(modality).results.detection_noun if registry.known(modality) else "detections"
        print(f"{modality}: {items:,} items" + (f", {dets:,} {noun}" if "det_seq" in res else "")
              + f" in {len(res['packet_seq']):,} packets; models {sorted(set(res['packet_model']))}")
        for s, c in zip(streams, counts):
            seqs = res["packet_seq"][res["packet_stream"].astype(str) == s]
            missing = int(seqs.max() + 1 - len(np.unique(seqs)))
            print(f"  stream {s!r}: packets {c:,} (seq {seqs.min()}..{seqs.max()}, {missing} missing)")
        arrays = [k for k in res if not k.startswith(("packet_", "det_")) and k not in ("seq", "row", "stream")]
        print(f"  per item: {', '.join(arrays)}")
        if "flags" in res:
            bits = np.unpackbits(res["flags"].astype(np.uint8)[:, None], axis=1)[:, ::-1].sum(axis=0)
            print("  flag bits set: " + ", ".join(f"{1 << b}: {int(n):,}" for b, n in enumerate(bits) if n))
        if args.csv or args.parquet:
            if not args.only:
                raise ValueError("--csv/--parquet export one modality: add --only NAME")
            df = to_pandas(res)
            if args.csv:
                df.to_csv(args.csv, index=False)
            if args.parquet:
                df.to_parquet(args.parquet)
            print(f"  wrote {len(df):,} rows")
    return 0
