"""CLI hooks: ``streamer simulate|demo|train|evaluate --modality diffusion``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ...core.profile import add_output_arguments
from ...core.recording import Recording
from .physics import Optics, draw_conditions, simulate

RESULTS_MD = Path(__file__).resolve().parents[3] / "bench" / "RESULTS.md"
SECTION = "## diffusion: D from blurred stacks (issue 18)"


def _optics(args) -> Optics:
    if getattr(args, "instrument", None):
        from ...core import profile, registry
        from .instrument import optics_of_profile

        inst = profile.load(args.instrument, registry.get)
        if inst.modality != "diffusion":
            raise ValueError(f"{args.instrument} is a {inst.modality} profile")
        return optics_of_profile(inst, frames=args.frames, size=args.size)
    return Optics(frames=args.frames, height=args.size, width=args.size, frame_s=args.frame_s,
                  exposure_s=args.exposure_s)


class DiffusionCommands:
    demo_packet_size = 256
    verbs = {"cut": "a movie (TIFF or .npy) + tracks (CSV, e.g. a saved trackpy DataFrame) -> replay file of "
                    "16-frame stacks around each track, playable with `streamer run/publish --modality diffusion`"}

    # ------------------------------------------------------------------ cut (real movies)
    def add_cut_arguments(self, p) -> None:
        p.add_argument("movie", help="movie (frames, height, width): .tif/.tiff or .npy")
        p.add_argument("tracks", help="CSV with columns frame, x, y, particle (x, y in pixels)")
        p.add_argument("output", help="replay file to write (.npz)")
        p.add_argument("--frames", type=int, default=16, help="frames per stack (T)")
        p.add_argument("--size", type=int, default=64, help="crop size (pixels)")
        p.add_argument("--pixel-nm", type=float, default=200.0)
        p.add_argument("--frame-s", type=float, required=True, help="frame period of the movie (s)")
        p.add_argument("--exposure-s", type=float, default=None, help="exposure (s, default = frame period)")
        p.add_argument("--baseline", type=float, default=0.0, help="camera offset, ADU")
        p.add_argument("--adu-per-photon", type=float, default=1.0)

    def cut(self, args: argparse.Namespace) -> int:
        from .loaders import cut_stacks, load_movie, load_tracks_csv

        movie = load_movie(args.movie)
        frame, x, y, particle = load_tracks_csv(args.tracks)
        stacks, pid, first = cut_stacks(movie, frame, x, y, particle, args.frames, args.size)
        if not len(stacks):
            raise ValueError(f"no track of {args.tracks} has {args.frames} consecutive frames inside the movie")
        header = {"frames": args.frames, "height": args.size, "width": args.size, "pixel_nm": args.pixel_nm,
                  "frame_s": args.frame_s, "exposure_s": args.exposure_s or args.frame_s,
                  "baseline": args.baseline, "adu_per_photon": args.adu_per_photon}
        rec = Recording("diffusion", "stacks", {"stacks": stacks.astype(np.uint16)}, header,
                        {"particle": pid, "first_frame": first}, {"movie": str(args.movie), "tracks": str(args.tracks)})
        path = rec.save(args.output)
        print(f"wrote {len(stacks):,} stacks of {args.frames}x{args.size}x{args.size} from "
              f"{len(np.unique(pid)):,} tracks to {path}")
        return 0

    # ------------------------------------------------------------------ simulate
    def add_simulate_arguments(self, p) -> None:
        p.add_argument("--stacks", type=int, default=2000, help="number of stacks")
        p.add_argument("--frames", type=int, default=16, help="frames per stack (T)")
        p.add_argument("--size", type=int, default=64, help="frame height = width (pixels, >= 11)")
        p.add_argument("--frame-s", type=float, default=0.010, help="frame period (s)")
        p.add_argument("--exposure-s", type=float, default=None, help="exposure (s, default = frame period)")
        p.add_argument("--instrument", default=None, metavar="PROFILE.toml",
                       help="simulate this instrument (pixel, frame period, exposure, PSF, camera; replaces "
                            "--frame-s/--exposure-s)")
        p.add_argument("--d", type=float, default=None, help="fixed D (um^2/s; default log-uniform 0.01-10)")
        p.add_argument("--photons", type=float, default=None,
                       help="fixed photons per frame (default log-uniform 100-5,000)")
        p.add_argument("--seed", type=int, default=0)

    def simulate(self, args: argparse.Namespace, demo: bool = False) -> Recording:
        op = _optics(args)
        rng = np.random.default_rng(args.seed)
        d, ph, bg = draw_conditions(rng, args.stacks, (0.01, 10.0), (100.0, 5000.0), (0.5, 4.0))
        if args.d is not None:
            d[:] = args.d
        if args.photons is not None:
            ph[:] = args.photons
        b = simulate(rng, d, ph, bg, op)
        header = {"frames": op.frames, "height": op.height, "width": op.width, "pixel_nm": op.pixel_nm,
                  "frame_s": op.frame_s, "exposure_s": op.exposure, "baseline": op.baseline,
                  "adu_per_photon": op.adu_per_photon}
        truth = {"D": b.d, "D_path": b.d_path, "photons": b.photons, "background": b.background,
                 "positions_nm": b.positions.astype(np.float32)}
        return Recording("diffusion", "stacks", {"stacks": b.stacks}, header, truth,
                         {"optics": op.asdict(), "seed": args.seed})

    def describe(self, rec: Recording) -> str:
        n, t, h, w = rec.arrays["stacks"].shape
        return f"{n:,} stacks of {t}x{h}x{w}"

    def demo_predictor(self, args: argparse.Namespace) -> str:
        return "trees"

    # ------------------------------------------------------------------ report
    def report(self, rec: Recording, res: dict[str, np.ndarray], args: argparse.Namespace) -> tuple[str, bool]:
        """Accuracy and coverage of persisted results vs the simulator's truth."""
        n = len(rec)
        size = getattr(args, "packet_size", None) or self.demo_packet_size
        idx = res["seq"].astype(np.int64) * size + res["row"].astype(np.int64)
        complete = len(idx) == n and len(np.unique(idx)) == n and idx.min(initial=0) >= 0 and idx.max(initial=-1) < n
        lines = [f"output            {'every stack exactly once' if complete else 'INCOMPLETE'} "
                 f"({len(idx):,} of {n:,} stacks persisted)"]
        ok_idx = (idx >= 0) & (idx < n)
        idx = idx[ok_idx]
        d_true = np.asarray(rec.truth["D"])[idx]
        d = np.maximum(np.asarray(res["D"])[ok_idx], 1e-4)
        lo, hi = np.asarray(res["D_lo"])[ok_idx], np.asarray(res["D_hi"])[ok_idx]
        err = np.log(d / d_true)
        cov = np.mean((lo <= d_true) & (d_true <= hi)) if len(idx) else float("nan")
        lines.append(f"median |log(D_hat/D)| {np.median(np.abs(err)):.3f}   median D_hat/D {np.exp(np.median(err)):.3f}"
                     f"   90 % interval coverage {cov:.1%}")
        fl = np.asarray(res["flags"])[ok_idx]
        lines.append(f"flagged           out-of-range {np.mean(fl & 1 > 0):.1%}, few-photons {np.mean(fl & 2 > 0):.1%}")
        return "\n".join(lines), bool(complete)

    # ------------------------------------------------------------------ calibrate
    def add_calibrate_arguments(self, p) -> None:
        p.add_argument("data", help="immobilized beads: replay file (.npz, stacks + header) or a movie / stacks "
                                    "(.tif, .npy: (T, H, W) or (n, T, H, W), ADU)")
        add_output_arguments(p)
        p.add_argument("--pixel-nm", type=float, default=None, help="pixel size (default: the file's header)")
        p.add_argument("--frame-s", type=float, default=None, help="frame period (default: the file's header)")
        p.add_argument("--exposure-s", type=float, default=None, help="exposure (default: header, else frame period)")
        p.add_argument("--baseline", type=float, default=None, help="camera offset, ADU (dark frames; default: header)")

    def calibrate(self, args: argparse.Namespace) -> int:
        from ...core import profile, registry
        from .calibrate import calibrate_beads
        from .loaders import load_movie

        out = Path(args.out)
        if out.exists() and not args.force:
            raise ValueError(f"{out} exists (--force to overwrite)")
        header: dict = {}
        if str(args.data).endswith(".npz"):
            from ...core.recording import load_recording

            rec = load_recording(args.data)
            if rec.modality != "diffusion":
                raise ValueError(f"{args.data} holds {rec.modality} data, not diffusion stacks")
            stacks, header = rec.arrays["stacks"], dict(rec.header)
        else:
            stacks = load_movie(args.data)
        base = profile.load(args.base, registry.get) if args.base else profile.nominal(registry.get("diffusion"))
        pick = lambda opt, key: opt if opt is not None else header.get(key)  # noqa: E731
        pixel, frame = pick(args.pixel_nm, "pixel_nm"), pick(args.frame_s, "frame_s")
        if pixel is None or frame is None:
            raise ValueError("the data has no header: give --pixel-nm and --frame-s (beads cannot tell them)")
        exposure = pick(args.exposure_s, "exposure_s") or frame
        baseline = pick(args.baseline, "baseline")
        baseline = base["baseline"] if baseline is None else baseline
        t0 = time.time()
        fit = calibrate_beads(np.asarray(stacks), float(pixel), float(baseline))
        src = f"calibrate {Path(args.data).name} {time.strftime('%Y-%m-%d')}"
        given = "header" if header else "option"
        prof = base.with_values({"pixel_nm": pixel, "frame_s": frame, "exposure_fraction": exposure / frame,
                                 "baseline": baseline}, given, args.name or out.stem)
        prof = prof.with_values({"fwhm_nm": fit.fwhm_nm, "adu_per_photon": fit.gain, "read_sigma": fit.read_sigma},
                                src)
        profile.parse(prof.to_toml(), registry.get, str(out))  # the file must pass its own validation
        prof.save(out)
        print(prof.summary(registry.get("diffusion").profile))
        print(f"beads {fit.beads}: FWHM {fit.fwhm_nm:.1f} nm (sd over beads {fit.fwhm_sd_nm:.1f}), PSF fit residual "
              f"{fit.residual_rms:.1%} of peak; gain {fit.gain:.3f} ADU/photon, read noise {fit.read_sigma:.2f} e-; "
              f"localisation noise {fit.loc_noise_nm:.1f} nm per frame ({time.time() - t0:.1f} s)")
        print(f"wrote {out}")
        return 0

    def instrument_bench(self, workdir: Path, quick: bool = False) -> dict:
        """bench/profiles.py: instrument A's model on B's data, then calibrate + train for B."""
        from .instrument_bench import run

        return run(workdir, quick)

    # ------------------------------------------------------------------ train
    def add_train_arguments(self, p) -> None:
        p.add_argument("--n-train", type=int, default=30000, help="simulated training stacks")
        p.add_argument("--n-cal", type=int, default=16000,
                       help="simulated calibration stacks (half: scale model, half: conformal quantiles)")
        p.add_argument("--rounds", type=int, default=350, help="boosting rounds")
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--instrument", default=None, metavar="PROFILE.toml",
                       help="train for this instrument profile (default: the nominal instrument)")
        p.add_argument("--out", default=None, help="bundle directory (default compiled_models/diffusion/trees, or "
                                                    "trees-<profile name> with --instrument)")

    def train(self, args: argparse.Namespace) -> int:
        from ...core import profile, registry
        from .model import DEFAULT_BUNDLE, train

        inst = profile.load(args.instrument, registry.get) if args.instrument else None
        if inst is not None and inst.modality != "diffusion":
            raise ValueError(f"{args.instrument} is a {inst.modality} profile")
        out = Path(args.out) if args.out else DEFAULT_BUNDLE.with_name(f"trees-{inst.name}") if inst else DEFAULT_BUNDLE
        t0 = time.time()
        m = train(out, n_train=args.n_train, n_cal=args.n_cal, seed=args.seed, rounds=args.rounds, instrument=inst,
                  progress=inst is not None)
        if inst is not None:
            print(f"trained for {inst.name} (hash {inst.hash}) in {time.time() - t0:.0f} s: {out}; workers started "
                  f"with --instrument {args.instrument} serve it (compile it here: `streamer compile`)")
        return 0 if m else 1

    # ------------------------------------------------------------------ evaluate
    def add_evaluate_arguments(self, p) -> None:
        p.add_argument("--per-cell", type=int, default=700, help="test stacks per (D decade, photons) cell")
        p.add_argument("--seed", type=int, default=7)
        p.add_argument("--bundle", default=None, help="model bundle (default compiled_models/diffusion/trees)")
        p.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")

    def evaluate(self, args: argparse.Namespace) -> int:
        from .evaluate import run_grid, table, throughput, tree_rates
        from .model import DEFAULT_BUNDLE
        from .predictors import TrackBaseline, TreesPredictor

        bundle = Path(args.bundle) if args.bundle else DEFAULT_BUNDLE
        trees = TreesPredictor(bundle, backend="compiled")
        preds = {"trees": trees, "msd": TrackBaseline("msd"), "cve": TrackBaseline("cve")}
        op = Optics()
        t0 = time.time()
        rows = run_grid(preds, per_cell=args.per_cell, seed=args.seed, op=op)
        text, ok, _ = table(rows, op)
        sim_s = time.time() - t0
        rates = throughput({**preds, "trees-xgboost": TreesPredictor(bundle, backend="xgboost")}, op=op)
        from .evaluate import make_packet
        rng = np.random.default_rng(11)
        b = simulate(rng, np.exp(rng.uniform(np.log(0.01), np.log(10), 4096)), np.full(4096, 1000.0),
                     np.full(4096, 2.0), op)
        X, _, _ = trees.features(make_packet(b.stacks, op, op.baseline, op.adu_per_photon))
        tr = tree_rates(bundle, X)
        pass_line = ("ALL CELLS PASS" if ok else "SOME CELLS FAIL") + \
            " (trees <= 0.7 x trajectory-D and <= CVE in median |log(D_hat/D)|, coverage 87-93 %)"
        perf = ("| predictor (one process, 1 thread, packets of 512 stacks 16x64x64) | stacks/s |\n|---|---|\n" +
                "\n".join(f"| {k} | {v:,.0f} |" for k, v in rates.items()) +
                f"\n| booster alone, compiled (rows/s) | {tr['compiled']:,.0f} |"
                f"\n| booster alone, xgboost (rows/s) | {tr['xgboost']:,.0f} |"
                f"\n\ncompiled / xgboost booster speed: {tr['compiled'] / tr['xgboost']:.1f}x; trees predictor "
                f"compiled / xgboost end of predict(): {rates['trees'] / rates['trees-xgboost']:.2f}x "
                f"(1-min load average {__import__('os').getloadavg()[0]:.1f} on a shared 2-core machine)")
        body = (f"{SECTION}\n\n`streamer evaluate --modality diffusion --per-cell {args.per_cell} --seed {args.seed}` "
                f"({time.strftime('%Y-%m-%d %H:%M')} UTC, model `{trees.model_id}`). Held-out simulated 16x64x64 "
                "stacks, 200 nm pixels, 10 ms frames, continuous exposure, FWHM 250 nm, background 0.5-4 "
                "photons/pixel, read noise 1.6 e-; D log-uniform within each decade. Errors are median "
                "|ln(D_hat/D)| against the D parameter. trajectory-D = MSD line fit lags 1-4 (slope/4); CVE = "
                "Vestergaard 2014 with R = 0.165. CRB: Fisher bound for D from a blurred 16-position track "
                "with Mortensen localisation variance (sd/D; 'med abs log' = 0.6745 sd/D, what an efficient "
                "track estimator would reach).\n\n" + text + f"\n\n{pass_line}\n\n" + perf)
        print(body)
        print(f"\n(simulation + prediction {sim_s:.0f} s)")
        if not args.no_write:
            from streamer.core.results_md import write_sections

            write_sections(RESULTS_MD, {SECTION: body})
            print(f"updated {RESULTS_MD}")
        return 0 if ok else 1
