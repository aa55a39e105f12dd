"""``streamer <verb> --modality electron`` hooks: simulate, report, train, evaluate."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from streamer.core.profile import add_output_arguments
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
    g.add_argument("--instrument", default=None, metavar="PROFILE.toml",
                   help="simulate this instrument (pixel pitch, beam energy, layer, read noise, gain, offset; "
                        "replaces --noise-e/--adu-per-e/--offset)")
    g.add_argument("--dark", action="store_true", help="dark frames (no electrons: the calibration's input)")
    g.add_argument("--library", type=int, default=20000, help="events in the simulated event library")
    g.add_argument("--library-seed", type=int, default=0,
                   help="event library (per instrument; 0 = the one training draws its train/scale/cal splits from)")
    if not any(a.dest == "seed" for a in p._actions):
        g.add_argument("--seed", type=int, default=0)


#: frames per packet for `streamer demo` (100 frames of 100x100 <u2 = 2 MB)
demo_packet_size = 100


def describe(rec: Recording) -> str:
    f = rec.arrays["frames"]
    return f"{len(f):,} frames of {f.shape[1]}x{f.shape[2]} ({len(rec.truth.get('x', [])):,} electrons)"


def load_profile(path):
    """An electron instrument profile from a file (clear error for another modality's)."""
    from streamer.core import profile, registry

    inst = profile.load(path, registry.get)
    if inst.modality != "electron":
        raise ValueError(f"{path} is a {inst.modality} profile, not an electron one")
    return inst


def simulate(args: argparse.Namespace, demo: bool = False) -> Recording:
    from .instrument import camera_of, header_of, physics_of
    from .model import library_splits
    from .physics import load_library
    from .simulate import simulate_frames

    h, w = (args.size[0], args.size[0]) if len(args.size) == 1 else args.size[:2]
    rate = args.electrons if args.electrons is not None else 10.0 * h * w / 1e4
    if getattr(args, "dark", False):
        rate = 0.0
    inst = load_profile(args.instrument) if getattr(args, "instrument", None) else None
    camera = camera_of(inst) if inst else {"noise_e": args.noise_e, "adu_per_e": args.adu_per_e, "offset": args.offset}
    lib = load_library(getattr(args, "library", 20000), getattr(args, "library_seed", 0),
                       *((physics_of(inst),) if inst else ()))
    idx = None if args.split == "all" else library_splits(len(lib))[args.split]
    fr = simulate_frames(lib, args.frames, h, w, rate=rate, dtype="<f4" if args.float else "<u2",
                         seed=getattr(args, "seed", 0) or 0, lib_indices=idx, **camera)
    header = {"height": int(h), "width": int(w), **(header_of(inst) if inst else
                                                     {"pixel_um": PIXEL_UM, "adu_per_e": float(args.adu_per_e),
                                                      "offset": float(args.offset)})}
    arrays = {"frames": fr.frames, "frame_id": np.arange(args.frames, dtype=np.int64)}
    meta = {"rate": rate, "noise_e": camera["noise_e"], "split": args.split, "physics": lib.physics}
    if inst is not None:
        meta["instrument"] = {"name": inst.name, "hash": inst.hash, "values": dict(inst.values)}
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
                   help="100x100 training frames (10 e- each; default: TrainConfig.train_frames, or "
                        "the smaller profile set with --instrument)")
    g.add_argument("--out", type=Path, default=None, help="bundle directory (default compiled_models/electron/trees, "
                                                          "or trees-<profile name> with --instrument)")
    g.add_argument("--nthread", type=int, default=2)
    g.add_argument("--instrument", default=None, metavar="PROFILE.toml",
                   help="train for this instrument profile (simulated with its physics and camera); the bundle "
                        "records the profile's hash and the ranges it covers")
    g.add_argument("--tiny", action="store_true", help="a few hundred frames and trees (tests: plumbing, not accuracy)")
    g.add_argument("--recalibrate", action="store_true",
                   help="keep the bundle's boosters (a missing pair classifier is trained), redo the detection cuts "
                        "and the conformal step")
    g.add_argument("--refit-specialist", action="store_true",
                   help="with --recalibrate: (re)fit the easy-event point boosters too (the others are kept)")
    g.add_argument("--refit-scale", action="store_true",
                   help="with --recalibrate: refit the error-scale booster, and the easy-event point boosters "
                        "it routes to (the others are kept)")


def train(args: argparse.Namespace) -> int:
    from .model import BUNDLE_DIR, TrainConfig
    from .model import train as fit

    if getattr(args, "instrument", None):
        from .instrument_train import PROFILE_CONFIG, TINY_CONFIG, train_for_profile

        inst = load_profile(args.instrument)
        out = args.out or BUNDLE_DIR.with_name(f"trees-{inst.name}")
        base = TINY_CONFIG if args.tiny else PROFILE_CONFIG
        if args.train_frames is not None:
            base = {**base, "train_frames": args.train_frames}
        manifest, seconds = train_for_profile(inst, out, {**base, "nthread": args.nthread}, progress=True)
        print(f"trained for {inst.name} (hash {inst.hash}) in {seconds:.0f} s: {out} "
              f"({manifest['training']['n_train']:,} training events); workers started with --instrument "
              f"{args.instrument} serve it (compile it here: `streamer compile`)")
        return 0
    cfg = TrainConfig(nthread=args.nthread)
    if args.train_frames is not None:
        cfg = TrainConfig(train_frames=args.train_frames, nthread=args.nthread)
    refit, refit_scale = getattr(args, "refit_specialist", False), getattr(args, "refit_scale", False)
    manifest = fit(cfg, args.out or BUNDLE_DIR, recalibrate=getattr(args, "recalibrate", False) or refit or refit_scale,
                   refit_specialist=refit, refit_scale=refit_scale)
    print(f"wrote {args.out or BUNDLE_DIR}: {manifest['training']['n_train']} training events")
    return 0


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("electron")
    g.add_argument("--eval-frames", type=int, default=40000,
                   help="held-out 100x100 frames (40,000: the coverage deciles' s.e. ~0.002, as in bench/electron)")
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


# ---------------------------------------------------------------------- calibrate (issue 14)


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("electron")
    g.add_argument("data", help="low-dose (flat) frames: replay file (.npz from `streamer simulate`/a converter) "
                                "or .npy (n, H, W) ADU; isolated electrons (a few per 100x100 frame)")
    add_output_arguments(g)
    g.add_argument("--dark", required=True, help="dark frames (no beam): .npz replay file or .npy (n, H, W) ADU")
    g.add_argument("--pixel-um", type=float, default=None, help="pixel pitch (default: the file's header, else --base)")
    g.add_argument("--energy-kev", type=float, default=None, help="beam energy (default: --base's)")
    g.add_argument("--fit-energy", action="store_true",
                   help="also fit the beam energy from the event-charge distribution (simulates a grid of energies)")
    g.add_argument("--sim-electrons", type=int, default=12000, help="electrons per simulated reference series")
    g.add_argument("--sim-library", type=int, default=12000, help="events in the reference event library")


def _frames_of(path: str) -> tuple[np.ndarray, dict]:
    if str(path).endswith(".npz"):
        from streamer.core.recording import load_recording

        rec = load_recording(path)
        if rec.modality != "electron":
            raise ValueError(f"{path} holds {rec.modality} data, not electron frames")
        return np.asarray(rec.arrays["frames"]), dict(rec.header)
    a = np.load(path, allow_pickle=False)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{path}: expected frames (n, H, W), got shape {a.shape}")
    return a, {}


def calibrate(args: argparse.Namespace) -> int:
    import time

    from streamer.core import profile, registry

    from .calibrate import calibrate as fit

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ValueError(f"{out} exists (--force to overwrite)")
    flat, header = _frames_of(args.data)
    dark, _ = _frames_of(args.dark)
    mod = registry.get("electron")
    base = load_profile(args.base) if args.base else profile.nominal(mod)
    given = {}
    if args.pixel_um is not None or "pixel_um" in header:
        given["pixel_um"] = float(args.pixel_um if args.pixel_um is not None else header["pixel_um"])
    if args.energy_kev is not None:
        given["energy_kev"] = float(args.energy_kev)
    values = {**base.values, **given}
    t0 = time.time()
    cal = fit(dark, flat, values, fit_energy=args.fit_energy, sim_electrons=args.sim_electrons,
              library_n=args.sim_library, log=print)
    src = f"calibrate {Path(args.data).name} + {Path(args.dark).name} {time.strftime('%Y-%m-%d')}"
    prof = base.with_values(given, "header" if "pixel_um" in header and args.pixel_um is None else "option",
                            args.name or out.stem)
    fitted = {"offset": cal.dark.offset, "read_noise_e": cal.read_noise_e, "adu_per_e": cal.adu_per_e}
    if cal.energy_se is not None:
        fitted["energy_kev"] = cal.energy_kev
    prof = prof.with_values(fitted, src)
    if not args.base:  # not "the simulator's default instrument" any more
        prof = profile.InstrumentProfile(prof.modality, prof.name, prof.values, prof.provenance, src)
    profile.parse(prof.to_toml(), registry.get, str(out))  # the file must pass its own validation
    prof.save(out)
    print(prof.summary(mod.profile))
    print("\n".join(cal.lines()) + f"\n({time.time() - t0:.0f} s)")
    print(f"wrote {out}")
    return 0


def instrument_bench(workdir: Path, quick: bool = False) -> dict:
    """bench/profiles.py: instrument A's model on B's data, then calibrate + train for B."""
    from .instrument_bench import run

    return run(Path(workdir), quick)
