"""``streamer <verb> --modality electron`` hooks: simulate, report, train, evaluate."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from streamer.core.recording import Recording

from .metrics import isolated, match
from .physics import PIXEL_UM


def add_simulate_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("electron")
    g.add_argument("--frames", type=int, default=2000, help="number of frames")
    g.add_argument("--size", type=int, nargs="+", default=[100], help="frame size: S or H W (pixels)")
    g.add_argument("--electrons", type=float, default=None,
                   help="mean electrons per frame (default 10 per 100x100, scaled with the frame area)")
    g.add_argument("--noise-e", type=float, default=20.0, help="read noise sigma, electrons")
    g.add_argument("--adu-per-e", type=float, default=1.0)
    g.add_argument("--offset", type=float, default=100.0, help="dark offset, ADU")
    g.add_argument("--float", action="store_true", help="send <f4 frames instead of <u2")
    g.add_argument("--split", default="test", choices=("train", "scale", "cal", "test", "all"),
                   help="library events to draw from (test: never seen in training)")
    if not any(a.dest == "seed" for a in p._actions):
        g.add_argument("--seed", type=int, default=0)


#: frames per packet for `streamer demo` (100 frames of 100x100 <u2 = 2 MB)
demo_packet_size = 100


def describe(rec: Recording) -> str:
    f = rec.arrays["frames"]
    return f"{len(f):,} frames of {f.shape[1]}x{f.shape[2]} ({len(rec.truth.get('x', [])):,} electrons)"


def simulate(args: argparse.Namespace, demo: bool = False) -> Recording:
    from .model import library_splits
    from .physics import load_library
    from .simulate import simulate_frames

    h, w = (args.size[0], args.size[0]) if len(args.size) == 1 else args.size[:2]
    rate = args.electrons if args.electrons is not None else 10.0 * h * w / 1e4
    lib = load_library()
    idx = None if args.split == "all" else library_splits(len(lib))[args.split]
    fr = simulate_frames(lib, args.frames, h, w, rate=rate, noise_e=args.noise_e, adu_per_e=args.adu_per_e,
                         offset=args.offset, dtype="<f4" if args.float else "<u2", seed=getattr(args, "seed", 0) or 0,
                         lib_indices=idx)
    header = {"height": int(h), "width": int(w), "pixel_um": PIXEL_UM, "adu_per_e": float(args.adu_per_e),
              "offset": float(args.offset)}
    arrays = {"frames": fr.frames, "frame_id": np.arange(args.frames, dtype=np.int64)}
    meta = {"rate": rate, "noise_e": args.noise_e, "split": args.split, "physics": lib.physics}
    return Recording("electron", "frames", arrays, header, fr.truth(), meta)


def _global_item(results: dict[str, np.ndarray]) -> np.ndarray:
    """Frame index in the recording of each detection: packets hold consecutive frames."""
    seq = np.asarray(results["seq"])
    order = np.unique(seq)
    per = np.array([(seq == s).sum() for s in order])
    start = dict(zip(order.tolist(), (np.cumsum(per) - per).tolist()))
    return np.array([start[s] for s in np.asarray(results["det_seq"]).tolist()], np.int64) + np.asarray(results["det_item"])


def report(rec: Recording, results: dict[str, np.ndarray], args) -> tuple[str, bool]:
    """Accuracy of persisted results vs the recording's ground truth."""
    t = rec.truth
    if "det_x" not in results or len(results.get("seq", [])) == 0:
        return "electron: no results", False
    item = _global_item(results)
    dx, dy = np.asarray(results["det_x"]), np.asarray(results["det_y"])
    m = match(item, dx, dy, t["item"], t["x"], t["y"])
    ok = m >= 0
    iso = isolated(t["item"], t["x"], t["y"])
    sel = np.nonzero(ok & iso)[0]
    err = np.hypot(dx[m[sel]] - t["x"][sel], dy[m[sel]] - t["y"][sel]) * PIXEL_UM
    eff = float(ok.mean())
    false = float((len(dx) - ok.sum()) / max(len(t["x"]), 1))
    frames_seen = len(np.asarray(results["seq"]))
    lines = [f"electron: {frames_seen}/{len(rec)} frames with results, {len(dx)} detections, {len(t['x'])} electrons",
             f"  efficiency {eff:.4f}, false detections {false:.4f} per electron",
             f"  mean entry error on isolated events {err.mean():.3f} um (n={len(err)})"]
    good = frames_seen == len(rec) and eff >= 0.95 and false <= 0.02
    r = np.asarray(results.get("det_radius", np.full(len(dx), np.nan)))
    if np.isfinite(r).any():
        cov = float((err <= r[m[sel]] * PIXEL_UM).mean())
        lines.append(f"  90% radius coverage {cov:.3f}")
        good &= 0.85 <= cov <= 0.95
    return "\n".join(lines), bool(good)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("electron")
    g.add_argument("--train-frames", type=int, default=None,
                   help="100x100 training frames (10 e- each; default: TrainConfig.train_frames)")
    g.add_argument("--out", type=Path, default=None, help="bundle directory (default compiled_models/electron/trees)")
    g.add_argument("--nthread", type=int, default=2)


def train(args: argparse.Namespace) -> int:
    from .model import BUNDLE_DIR, TrainConfig
    from .model import train as fit

    cfg = TrainConfig(nthread=args.nthread)
    if args.train_frames is not None:
        cfg = TrainConfig(train_frames=args.train_frames, nthread=args.nthread)
    manifest = fit(cfg, args.out or BUNDLE_DIR)
    print(f"wrote {args.out or BUNDLE_DIR}: {manifest['training']['n_train']} training events")
    return 0


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("electron")
    g.add_argument("--eval-frames", type=int, default=3000, help="held-out 100x100 frames")
    g.add_argument("--dense-frames", type=int, default=4, help="576x576 frames at ~2,927 e-")
    g.add_argument("--no-speed", action="store_true", help="skip the throughput measurement")
    g.add_argument("--results-md", type=Path, default=Path("bench/RESULTS.md"))


def evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate as run

    text, ok = run(args.eval_frames, args.dense_frames, speed=not args.no_speed)
    print(text)
    try:
        from streamer.core.results_md import write_sections

        write_sections(args.results_md, {"## Electron (seed 003)": "## Electron (seed 003)\n\n" + text})
    except Exception as exc:  # the results file is a convenience, never a reason to fail
        print(f"(could not update {args.results_md}: {exc})")
    return 0 if all(ok.values()) else 1
