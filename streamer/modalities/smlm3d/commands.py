"""CLI hooks: ``streamer simulate|demo|train|evaluate|calibrate --modality smlm3d``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ...core.profile import add_output_arguments
from ...core.recording import Recording
from .simulate import DENSITIES, SNR_LEVELS, Camera, SimConfig, simulate_frames

RESULTS_MD = Path(__file__).resolve().parents[3] / "bench" / "RESULTS.md"


class SMLM3DCommands:
    #: frames per packet of `streamer demo/bench` replays: as the evaluation packs them (the trees'
    #: sparse-acquisition cut is decided per packet), and enough packets for a throughput figure
    demo_packet_size = 100
    verbs = {"convert": "a camera stack (TIFF or .npy, ADU) [+ ground-truth ThunderSTORM CSV] -> replay file, "
                        "playable with `streamer run/publish --modality smlm3d`"}

    # ------------------------------------------------------------------ convert (real acquisitions)
    def add_convert_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("stack", help="camera frames (n, height, width) in ADU: .tif/.tiff (multi-page) or .npy")
        p.add_argument("output", help="replay file to write (.npz)")
        p.add_argument("--truth", default=None, metavar="GT.csv",
                       help="ground truth as a ThunderSTORM-style CSV (frame, x [nm], y [nm], z [nm], intensity "
                            "[photon]; 1-based frames): `streamer run` then reports JI / RMSE against it")
        p.add_argument("--instrument", default=None, metavar="PROFILE.toml",
                       help="the camera's instrument profile: pixel size, baseline and gain from it (the options "
                            "below override); serve it with `streamer worker --instrument PROFILE.toml`")
        p.add_argument("--pixel-nm", type=float, default=None, help="pixel size in the sample (default 100)")
        p.add_argument("--baseline", type=float, default=None, help="camera offset, ADU (default 100)")
        p.add_argument("--adu-per-photon", type=float, default=None, help="camera gain, ADU per photon (default 1)")
        p.add_argument("--first-frame", type=int, default=0, help="acquisition number of the stack's first frame")

    def convert(self, args: argparse.Namespace) -> int:
        from .loaders import load_stack, truth_from_csv

        frames = load_stack(args.stack)
        header = {"height": int(frames.shape[1]), "width": int(frames.shape[2]), "pixel_nm": 100.0,
                  "baseline": 100.0, "adu_per_photon": 1.0}
        meta = {"source": str(args.stack)}
        if args.instrument:
            from .instrument import header_of

            inst = load_profile(args.instrument)
            header.update(header_of(inst))
            meta["instrument"] = {"name": inst.name, "hash": inst.hash, "values": dict(inst.values)}
        for key in ("pixel_nm", "baseline", "adu_per_photon"):
            v = getattr(args, key)
            if v is not None:
                header[key] = float(v)
        if header["pixel_nm"] <= 0 or header["adu_per_photon"] <= 0:
            raise ValueError("--pixel-nm and --adu-per-photon must be > 0")
        truth = truth_from_csv(args.truth, len(frames)) if args.truth else {}
        if args.truth:
            meta["truth"] = str(args.truth)
        ids = np.arange(args.first_frame, args.first_frame + len(frames), dtype=np.int64)
        rec = Recording("smlm3d", "frames", {"frames": frames, "frame_id": ids}, header, truth, meta)
        path = rec.save(args.output)
        print(f"wrote {len(frames):,} frames of {frames.shape[1]}x{frames.shape[2]} "
              f"({header['pixel_nm']:g} nm pixels, baseline {header['baseline']:g} ADU, "
              f"{header['adu_per_photon']:g} ADU/photon)"
              + (f" with {len(truth['x']):,} true emitters" if truth else "") + f" to {path}")
        return 0

    # ------------------------------------------------------------------ simulate
    def add_simulate_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--frames", type=int, default=2000, help="64x64 frames")
        p.add_argument("--snr", choices=list(SNR_LEVELS), default="5k/50",
                       help="mean photons per emitter / background photons per pixel (seed 002)")
        p.add_argument("--density", type=float, default=2.0, help="mean emitters per frame")
        p.add_argument("--sampling", choices=["structure", "csr"], default="structure",
                       help="emitters on random three-helix filaments, or complete spatial randomness")
        p.add_argument("--structure-every", type=int, default=100,
                       help="frames per random filament structure (structure sampling)")
        p.add_argument("--emccd", action="store_true", help="EMCCD excess noise (gain register)")
        p.add_argument("--adu-per-photon", type=float, default=1.0)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--instrument", default=None, metavar="PROFILE.toml",
                       help="simulate this instrument (calibration curve, pixel size, camera; issue 14) instead "
                            "of the nominal one (--adu-per-photon and --emccd are then the profile's)")
        p.add_argument("--beads", default=None, metavar="BEADS.tif",
                       help="instead of blinking emitters: a bead z-stack for `streamer calibrate` written to this "
                            "TIFF (the replay file holds the same frames, truth z per frame)")
        p.add_argument("--z-step-nm", type=float, default=20.0, help="bead stack: stage step between frames")
        p.add_argument("--z-range-nm", default="-800,800", help="bead stack: first,last stage z (nm)")
        p.add_argument("--n-beads", type=int, default=6, help="bead stack: beads in the field")

    def simulate(self, args: argparse.Namespace, demo: bool = False) -> Recording:
        inst = load_profile(args.instrument) if getattr(args, "instrument", None) else None
        if getattr(args, "beads", None):
            return self._beads(args, inst)
        N, b = SNR_LEVELS[args.snr]
        cam = Camera(adu_per_photon=args.adu_per_photon, emccd=args.emccd)
        extra = {}
        if inst is not None:
            from .instrument import camera_of, psf_of

            cam = camera_of(inst)
            extra = {"psf": psf_of(inst), "pixel_nm": float(inst["pixel_nm"])}
        cfg = SimConfig(n_frames=args.frames, photons=N, background=b, density=args.density,
                        sampling=args.sampling, structure_every=args.structure_every, camera=cam,
                        seed=args.seed, **extra)
        frames, truth = simulate_frames(cfg)
        header = {"height": cfg.height, "width": cfg.width, "pixel_nm": cfg.pixel_nm,
                  "baseline": cam.baseline, "adu_per_photon": cam.adu_per_photon}
        meta = {"snr": args.snr, "photons": N, "background": b, "density": args.density,
                "sampling": args.sampling, "structure_every": args.structure_every, "emccd": args.emccd, "seed": args.seed}
        if inst is not None:
            meta["instrument"] = {"name": inst.name, "hash": inst.hash, "values": dict(inst.values)}
        return Recording("smlm3d", "frames", {"frames": frames, "frame_id": np.arange(len(frames), dtype=np.int64)},
                         header, truth, meta)

    def _beads(self, args: argparse.Namespace, inst) -> Recording:
        """A bead z-stack of the instrument: TIFF at ``--beads`` (+ the replay file the verb writes)."""
        import json

        import tifffile

        from ...core import profile, registry
        from .calibrate import simulate_beads
        from .instrument import camera_of, header_of, psf_of

        inst = inst or profile.nominal(registry.get("smlm3d"))
        lo, hi = (float(v) for v in args.z_range_nm.split(","))
        frames, z = simulate_beads(psf_of(inst), camera_of(inst), float(inst["pixel_nm"]), n_beads=args.n_beads,
                                   z_step_nm=args.z_step_nm, z_range=(lo, hi), seed=args.seed)
        header = {"height": frames.shape[1], "width": frames.shape[2], **header_of(inst)}
        desc = {"z_nm": z.tolist(), "z_step_nm": args.z_step_nm, **header_of(inst)}
        tifffile.imwrite(args.beads, frames, description=json.dumps(desc))
        print(f"wrote a {len(frames)}-frame bead z-stack ({args.n_beads} beads, z {lo:g}..{hi:g} nm step "
              f"{args.z_step_nm:g}) of {inst.name!r} to {args.beads}")
        meta = {"beads": True, "instrument": {"name": inst.name, "hash": inst.hash, "values": dict(inst.values)}}
        return Recording("smlm3d", "frames", {"frames": frames, "frame_id": np.arange(len(frames), dtype=np.int64)},
                         header, {"z": z}, meta)

    def describe(self, rec: Recording) -> str:
        if rec.meta.get("beads"):
            return f"bead z-stack of {len(rec):,} frames"
        what = (f"({rec.meta.get('sampling')}, {rec.meta.get('snr')})" if "snr" in rec.meta
                else f"(from {Path(rec.meta.get('source', '?')).name})")
        return (f"{len(rec):,} frames {rec.arrays['frames'].shape[1]}x{rec.arrays['frames'].shape[2]}, "
                f"{len(rec.truth.get('x', ())):,} emitters {what}")

    def demo_predictor(self, args: argparse.Namespace) -> str:
        return "trees"

    # ------------------------------------------------------------------ report
    def report(self, rec: Recording, res: dict[str, np.ndarray], args: argparse.Namespace) -> tuple[str, bool]:
        """JI / RMSE / efficiency / coverage of persisted results vs the simulator's truth."""
        from .evaluate import score_cell

        n = len(rec)
        key = res["seq"].astype(np.int64) * (1 << 20) + res["row"].astype(np.int64)
        order = np.argsort(key, kind="stable")
        complete = len(key) == n and len(np.unique(key)) == n
        lines = [f"output            {'every frame exactly once' if complete else 'INCOMPLETE'} "
                 f"({len(key):,} of {n:,} frames persisted)"]
        # global frame index of each persisted (seq, row): packets carry consecutive frames in order
        frame_of = np.empty(len(key), np.int64)
        frame_of[order] = np.arange(len(key))
        dkey = res["det_seq"].astype(np.int64) * (1 << 20) + res["det_item"].astype(np.int64)
        pos = np.searchsorted(key[order], dkey)
        det_frame = frame_of[order][np.clip(pos, 0, len(key) - 1)] if len(key) else pos
        out = {k[4:]: res[k] for k in res if k.startswith("det_")}
        out["item"] = det_frame
        a = score_cell(out, rec.truth, float(rec.header.get("pixel_nm", 100.0)))
        lines.append(f"localizations     {a['tp'] + a['fp']:,} kept ({a['tp']:,} matched, {a['fp']:,} false, "
                     f"{a['fn']:,} missed of {len(rec.truth['x']):,} emitters)")
        lines.append(f"JI {a['ji']:.1f} %   lateral RMSE {a['rmse_lat']:.1f} nm (CRLB {a['crlb_lat']:.1f})   axial "
                     f"RMSE {a['rmse_ax']:.1f} nm (CRLB {a['crlb_ax']:.1f})   3D efficiency {a['eff_3d']:.1f} %")
        lines.append(f"interval coverage x {a['cov_x']:.1%}  y {a['cov_y']:.1%}  z {a['cov_z']:.1%} (nominal 90 %)")
        return "\n".join(lines), complete

    # ------------------------------------------------------------------ train
    def add_train_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--sampling", choices=["structure", "csr", "both"], default="both")
        p.add_argument("--chunks", type=int, default=None,
                       help="50-frame simulation chunks per bundle (default 320)")
        p.add_argument("--rounds", type=int, default=60, help="boosting rounds per ensemble")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--instrument", default=None, metavar="PROFILE.toml",
                       help="train one structure-sampled bundle for this instrument profile (its curve, pixel size "
                            "and camera simulated); the bundle records the profile's hash and the ranges it covers")
        p.add_argument("--out", type=Path, default=None,
                       help="bundle directory (default compiled_models/smlm3d/trees-<profile name> with --instrument)")
        p.add_argument("--tiny", action="store_true", help="a few chunks and trees (tests: plumbing, not accuracy)")
        p.add_argument("--recalibrate", action="store_true",
                       help="keep the shipped bundles' ensembles and score thresholds, redo only their conformal "
                            "quantiles (after a change to what the served model keeps)")
        p.add_argument("--retune", action="store_true",
                       help="keep the shipped bundles' ensembles and correction weights, choose their score thresholds "
                            "anew (held-out and sparse tuning simulations), then redo their conformal quantiles")

    def train(self, args: argparse.Namespace) -> int:
        from .train import train_bundle

        if getattr(args, "instrument", None):
            from .instrument_train import PROFILE_CONFIG, TINY_CONFIG, train_for_profile
            from .model import MODEL_DIR

            inst = load_profile(args.instrument)
            out = args.out or MODEL_DIR / f"trees-{inst.name}"
            cfg = dict(TINY_CONFIG if args.tiny else PROFILE_CONFIG)
            if args.chunks is not None:
                cfg["n_chunks"] = args.chunks
            manifest, seconds = train_for_profile(inst, Path(out), cfg, seed=args.seed, progress=True)
            print(f"trained for {inst.name} (hash {inst.hash}) in {seconds:.0f} s: {out} "
                  f"({manifest['training']['candidates']:,} training candidates from {manifest['training']['chunks']} "
                  f"chunks); workers started with --instrument {args.instrument} serve it")
            return 0
        if args.chunks is None:
            args.chunks = 320

        todo = ["structure", "csr"] if args.sampling == "both" else [args.sampling]
        for s in todo:
            train_bundle(s, "trees-structure" if s == "structure" else "trees-csr", n_chunks=args.chunks,
                         rounds=args.rounds, seed=args.seed + (0 if s == "structure" else 1),
                         recalibrate=getattr(args, "recalibrate", False), retune=getattr(args, "retune", False))
        return 0

    # ------------------------------------------------------------------ evaluate
    def add_evaluate_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--emitters", type=int, default=600, help="true emitters per SNR x density cell (at least)")
        p.add_argument("--backend", choices=["auto", "compiled", "xgboost"], default="auto")
        p.add_argument("--test-sampling", choices=["structure", "csr"], default="structure")
        p.add_argument("--densities", default=",".join(str(d) for d in DENSITIES),
                       help="comma-separated emitters/frame (default: the seed's 0.38 ... 13 subset)")
        p.add_argument("--draw-seed", type=int, default=None,
                       help="another draw of test frames (default: the tables' draw, seed 10000; 20000 and 30000 "
                            "were used to choose the sparse-acquisition rules); written to its own section")
        p.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")

    def evaluate(self, args: argparse.Namespace) -> int:
        from .evaluate import TEST_SEED, run, table, verdicts
        from .predictors import MLEPredictor, TreesPredictor

        preds = {"mle": MLEPredictor(), "mle-2pass": MLEPredictor(passes=2), "trees-csr": TreesPredictor("trees-csr", args.backend),
                 "trees": TreesPredictor("trees-structure", args.backend)}
        t0 = time.perf_counter()
        dens = tuple(float(d) for d in args.densities.split(","))
        seed = TEST_SEED if args.draw_seed is None else int(args.draw_seed)
        rows = run(preds, tuple(SNR_LEVELS), dens, args.emitters, args.test_sampling, seed=seed)
        text = table(rows)
        checks = verdicts(rows)
        print("\n" + text + "\n\n" + "\n".join(checks))
        print(f"\n({time.perf_counter() - t0:.0f} s)")
        if not args.no_write:
            from ...core.results_md import write_sections

            tuning = preds["trees"].bundle.manifest.get("score_threshold_tuning", "held-out chunks")
            draw = "" if args.draw_seed is None else f", draw seed {seed}"
            title = f"## smlm3d: SNR x density ({args.test_sampling} test frames{draw})"
            opt = "" if args.draw_seed is None else f" --draw-seed {seed}"
            body = (f"{title}\n\n"
                    f"`streamer evaluate --modality smlm3d --emitters {args.emitters} --test-sampling "
                    f"{args.test_sampling} --densities {args.densities}{opt}`; trees = structure-trained bundle, frames/s = one core, "
                    f"whole predictor (detection + fit + trees); score thresholds tuned on {tuning}\n\n{text}\n\n"
                    + "\n".join(f"- {c}" for c in checks))
            write_sections(RESULTS_MD, {title: body})
        return 0

    # ------------------------------------------------------------------ calibrate (issue 14)
    def add_calibrate_arguments(self, p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("smlm3d")
        g.add_argument("data", help="bead z-stack TIFF (frames at known stage z steps; `streamer simulate --modality "
                                    "smlm3d OUT.npz --beads BEADS.tif` writes one)")
        add_output_arguments(g)
        g.add_argument("--z-step-nm", type=float, default=None,
                       help="stage step between frames (default: the TIFF's description, if it has z)")
        g.add_argument("--z-start-nm", type=float, default=None,
                       help="stage z of the first frame (default: the stack centred on 0); the fit finds the foci' "
                            "midpoint itself, so this only labels the plot")
        g.add_argument("--pixel-nm", type=float, default=None, help="pixel size (default: the TIFF's description, else --base)")
        g.add_argument("--baseline", type=float, default=None, help="camera offset ADU (default: description, else --base)")
        g.add_argument("--adu-per-photon", type=float, default=None, help="camera gain (default: description, else --base)")
        g.add_argument("--read-noise", type=float, default=None,
                       help="camera read noise, ADU rms (a bead stack does not measure it; default: --base's)")
        g.add_argument("--emccd", type=int, choices=[0, 1], default=None, help="1: an EMCCD (default: --base's)")
        g.add_argument("--plot", default=None, help="PNG of the fit (default: next to --out)")

    def calibrate(self, args: argparse.Namespace) -> int:
        import json

        import tifffile

        from ...core import profile, registry
        from .calibrate import calibrate_beads, plot
        from .instrument import curve_values

        out = Path(args.out)
        if out.exists() and not args.force:
            raise ValueError(f"{out} exists (--force to overwrite)")
        with tifffile.TiffFile(args.data) as tif:
            frames = tif.asarray()
            try:
                desc = json.loads(tif.pages[0].description or "{}")
            except ValueError:
                desc = {}
        if frames.ndim != 3:
            raise ValueError(f"{args.data}: expected a z-stack (n_z, H, W), got shape {frames.shape}")
        mod = registry.get("smlm3d")
        base = load_profile(args.base) if args.base else profile.nominal(mod)
        n = len(frames)
        if args.z_step_nm is not None:
            start = args.z_start_nm if args.z_start_nm is not None else -0.5 * (n - 1) * args.z_step_nm
            z = start + args.z_step_nm * np.arange(n)
        elif isinstance(desc.get("z_nm"), list) and len(desc["z_nm"]) == n:
            z = np.asarray(desc["z_nm"], float)
        else:
            raise ValueError(f"{args.data}: give --z-step-nm (the TIFF does not say where each frame was taken)")
        given, source = {}, {}
        for key in ("pixel_nm", "baseline", "adu_per_photon", "read_noise", "emccd"):
            v = getattr(args, key)
            if v is not None:
                given[key], source[key] = float(v), "option"
            elif key in desc:
                given[key], source[key] = float(desc[key]), "TIFF description"
        values = {**base.values, **given}
        t0 = time.time()
        cal = calibrate_beads(frames, z, values["pixel_nm"], values["baseline"], values["adu_per_photon"])
        src = f"calibrate {Path(args.data).name} {time.strftime('%Y-%m-%d')}"
        prof = base
        for key, how in source.items():
            prof = prof.with_values({key: given[key]}, how)
        prof = prof.with_values(curve_values(cal.psf), src, args.name or out.stem)
        if not args.base:  # not "the simulator's default instrument" any more
            prof = profile.InstrumentProfile(prof.modality, prof.name, prof.values, prof.provenance, src)
        profile.parse(prof.to_toml(), registry.get, str(out))  # the file must pass its own validation
        prof.save(out)
        png = plot(cal, args.plot or out.with_suffix(".png"))
        print(prof.summary(mod.profile))
        print("\n".join(cal.lines()) + f"\n({time.time() - t0:.1f} s)")
        print(f"wrote {out}" + (f" and {png}" if png else " (no plot: matplotlib is not installed)"))
        return 0

    def instrument_bench(self, workdir: Path, quick: bool = False) -> dict:
        """bench/profiles.py: instrument A's model on B's data, then calibrate + train for B."""
        from .instrument_bench import run

        return run(Path(workdir), quick)


def load_profile(path):
    """An smlm3d instrument profile from a file (clear error for another modality's)."""
    from ...core import profile, registry

    inst = profile.load(path, registry.get)
    if inst.modality != "smlm3d":
        raise ValueError(f"{path} is a {inst.modality} profile, not an smlm3d one")
    return inst
