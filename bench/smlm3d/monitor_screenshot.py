"""docs/smlm3d/monitor.png: a real pipeline run (replay -> sink -> 2 workers running ``trees``) watched
by ``streamer monitor --modality smlm3d`` (the shell hosting the smlm3d live render).

    STREAMER_MODALITIES=streamer.modalities.smlm3d:MODALITY .venv/bin/python bench/smlm3d/monitor_screenshot.py

Falls back to nothing: if the pipeline or monitor is unavailable the script fails loudly;
``view_screenshot.py`` renders the view alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("STREAMER_MODALITIES", "streamer.modalities.smlm3d:MODALITY")

from streamer.modalities.smlm3d.commands import SMLM3DCommands  # noqa: E402
from streamer.pipeline.launcher import LocalPipeline  # noqa: E402
from streamer.pipeline.publisher import replay  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=6000)
    ap.add_argument("--rate", type=float, default=1000.0, help="frames/s (paced like a camera)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "smlm3d" / "monitor.png"))
    a = ap.parse_args()
    cmds = SMLM3DCommands()
    p = argparse.ArgumentParser()
    cmds.add_simulate_arguments(p)
    rec = cmds.simulate(p.parse_args(["--frames", str(a.frames), "--density", "2", "--snr", "5k/50",
                                      "--sampling", "structure", "--seed", "11",
                                      "--structure-every", str(a.frames)]))
    seconds = a.frames / a.rate
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    with LocalPipeline(2, "smlm3d:trees") as pipe:
        mon = subprocess.Popen([sys.executable, "-m", "streamer.cli", "monitor", "--modality", "smlm3d",
                                "--address", pipe.endpoints["results"], "--size", "900x900",
                                "--duration", str(1.5 + 0.9 * seconds), "--screenshot", a.out],
                               stdout=subprocess.PIPE, text=True, env=env)
        try:
            mon.stdout.readline()
            time.sleep(1.0)
            sent = replay(rec, pipe.endpoints["ingest"], packet_size=50, rate=a.rate,
                          confirm=pipe.endpoints["results"])
            pipe.wait(120)
            out, _ = mon.communicate(timeout=60)
        finally:
            if mon.poll() is None:
                mon.kill()
                mon.wait()
    print(f"replayed {sent}; monitor: {out.strip()}")
    return 0 if Path(a.out).is_file() else 1


if __name__ == "__main__":
    raise SystemExit(main())
