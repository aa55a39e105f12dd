"""Screenshots of every modality's monitor view during a real pipeline run: docs/<modality>/monitor.png.

    .venv/bin/python bench/monitor_views.py                   # electron, diffusion, smlm3d
    .venv/bin/python bench/monitor_views.py --modality electron

Per modality: simulate with its own simulator, replay paced (items/s below) through sink + 2
workers running its default predictor, while a headless ``streamer monitor --modality M``
(the shell hosting the modality's view) is subscribed and saves its window before the data ends.
MINFLUX has its own script with a trace selection (bench/monitor_screenshot.py -> docs/monitor.png).
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

from streamer.commands import simulation  # noqa: E402
from streamer.core import registry  # noqa: E402
from streamer.pipeline.launcher import LocalPipeline  # noqa: E402
from streamer.pipeline.publisher import replay  # noqa: E402

#: modality -> (simulator options, items per packet, replay rate items/s)
CASES = {
    "electron": (["--frames", "3000", "--size", "100"], 20, 500.0),
    "diffusion": (["--stacks", "1200"], 10, 150.0),
    "smlm3d": (["--frames", "3000"], 20, 400.0),
}


def shoot(name: str, out: Path) -> str:
    mod = registry.get(name)
    options, size, rate = CASES[name]
    rec = simulation.recording(mod, options)
    seconds = len(rec) / rate
    out.parent.mkdir(parents=True, exist_ok=True)
    with LocalPipeline(2, f"{name}:") as pipe:
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
        mon = subprocess.Popen([sys.executable, "-m", "streamer.cli", "monitor", "--modality", name,
                                "--address", pipe.endpoints["results"], "--duration", str(1.0 + 0.8 * seconds),
                                "--screenshot", str(out)], stdout=subprocess.PIPE, text=True, env=env)
        try:
            mon.stdout.readline()
            time.sleep(1.0)
            replay(rec, pipe.endpoints["ingest"], packet_size=size, rate=rate, confirm=pipe.endpoints["results"])
            pipe.wait(120)
            text, _ = mon.communicate(timeout=60)
        finally:
            if mon.poll() is None:
                mon.kill()
                mon.wait()
    return f"{name}: {len(rec):,} {rec.kind} at {rate:,.0f}/s -> {out} ({text.strip()[-120:]})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modality", action="append", default=None, choices=list(CASES))
    args = ap.parse_args()
    ok = True
    for name in args.modality or [n for n in CASES if registry.known(n)]:
        out = ROOT / "docs" / name / "monitor.png"
        print(shoot(name, out), flush=True)
        ok &= out.is_file()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
