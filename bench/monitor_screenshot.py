"""Regenerate docs/monitor.png: a real pipeline run watched by ``streamer monitor``.

    .venv/bin/python bench/monitor_screenshot.py [--predictor dynamic] [--out docs/monitor.png]

Simulates dynamic-regime traces (2 emitters on -> 1 on -> background), replays them paced through
sink + 2 workers running the predictor, with a headless monitor subscribed that saves its window:
the monitor shell (rates, display lag, errors, flags by name, sink statistics) hosting the MINFLUX
view (distance trace with 90% interval band, histogram; one trace selected).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.pipeline.launcher import LocalPipeline  # noqa: E402
from streamer.pipeline.publisher import replay  # noqa: E402
from streamer.modalities.minflux.simulate import simulate  # noqa: E402


def _modality_option() -> list[str]:
    """``--modality minflux`` when the CLI has the global option (MINFLUX is its default anyway)."""
    import contextlib
    import io

    from streamer.cli import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["monitor", "--modality", "minflux"])
    except SystemExit:
        return []
    return ["--modality", "minflux"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictor", default="dynamic")
    ap.add_argument("--out", default=str(ROOT / "docs" / "monitor.png"))
    ap.add_argument("--traces", type=int, default=4)
    ap.add_argument("--tuples-per-trace", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=10_000.0, help="replay rate, tuples/s")
    ap.add_argument("--trace", type=int, default=None, help="trace shown (default: the second one)")
    args = ap.parse_args(argv)

    rec = simulate("dynamic", args.traces, args.tuples_per_trace, seed=7)
    trace = args.trace if args.trace is not None else int(sorted(set(rec.tuples.trace_id.tolist()))[1])
    seconds = len(rec) / args.rate
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with LocalPipeline(2, args.predictor) as pipe:
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
        mon = subprocess.Popen([sys.executable, "-m", "streamer.cli", "monitor", *_modality_option(),
                                "--address", pipe.endpoints["results"],
                                "--trace", str(trace), "--window", "20000",
                                # captured while data still flows (rates on screen), after the shown trace
                                "--duration", str(1.0 + 0.7 * seconds),
                                "--screenshot", args.out], stdout=subprocess.PIPE, text=True, env=env)
        try:
            mon.stdout.readline()
            time.sleep(1.0)
            sent = replay(rec, pipe.endpoints["ingest"], packet_size=100, rate=args.rate,
                          confirm=pipe.endpoints["results"])
            summary = pipe.wait(120)
            out, _ = mon.communicate(timeout=60)
        finally:
            if mon.poll() is None:
                mon.kill()
                mon.wait()
    print(f"replayed {sent['tuples']:,} tuples at {args.rate:,.0f}/s; sink released {summary['tuples']:,}")
    print(out.strip())
    return 0 if Path(args.out).is_file() else 1


if __name__ == "__main__":
    sys.exit(main())
