"""CLI hooks: ``streamer simulate|demo|train|evaluate --modality smlm3d``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ...core.recording import Recording
from .simulate import DENSITIES, SNR_LEVELS, Camera, SimConfig, simulate_frames

RESULTS_MD = Path(__file__).resolve().parents[3] / "bench" / "RESULTS.md"


class SMLM3DCommands:
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

    def simulate(self, args: argparse.Namespace, demo: bool = False) -> Recording:
        N, b = SNR_LEVELS[args.snr]
        cam = Camera(adu_per_photon=args.adu_per_photon, emccd=args.emccd)
        cfg = SimConfig(n_frames=args.frames, photons=N, background=b, density=args.density,
                        sampling=args.sampling, structure_every=args.structure_every, camera=cam,
                        seed=args.seed)
        frames, truth = simulate_frames(cfg)
        header = {"height": cfg.height, "width": cfg.width, "pixel_nm": cfg.pixel_nm,
                  "baseline": cam.baseline, "adu_per_photon": cam.adu_per_photon}
        meta = {"snr": args.snr, "photons": N, "background": b, "density": args.density,
                "sampling": args.sampling, "structure_every": args.structure_every, "emccd": args.emccd, "seed": args.seed}
        return Recording("smlm3d", "frames", {"frames": frames, "frame_id": np.arange(len(frames), dtype=np.int64)},
                         header, truth, meta)

    def describe(self, rec: Recording) -> str:
        return (f"{len(rec):,} frames {rec.arrays['frames'].shape[1]}x{rec.arrays['frames'].shape[2]}, "
                f"{len(rec.truth.get('x', ())):,} emitters ({rec.meta.get('sampling')}, {rec.meta.get('snr')})")

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
        p.add_argument("--chunks", type=int, default=320, help="50-frame simulation chunks per bundle")
        p.add_argument("--rounds", type=int, default=60, help="boosting rounds per ensemble")
        p.add_argument("--seed", type=int, default=0)

    def train(self, args: argparse.Namespace) -> int:
        from .train import train_bundle

        todo = ["structure", "csr"] if args.sampling == "both" else [args.sampling]
        for s in todo:
            train_bundle(s, "trees-structure" if s == "structure" else "trees-csr", n_chunks=args.chunks,
                         rounds=args.rounds, seed=args.seed + (0 if s == "structure" else 1))
        return 0

    # ------------------------------------------------------------------ evaluate
    def add_evaluate_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--emitters", type=int, default=600, help="true emitters per SNR x density cell (at least)")
        p.add_argument("--backend", choices=["auto", "compiled", "xgboost"], default="auto")
        p.add_argument("--test-sampling", choices=["structure", "csr"], default="structure")
        p.add_argument("--densities", default=",".join(str(d) for d in DENSITIES),
                       help="comma-separated emitters/frame (default: the seed's 0.38 ... 13 subset)")
        p.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")

    def evaluate(self, args: argparse.Namespace) -> int:
        from .evaluate import run, table, verdicts
        from .predictors import MLEPredictor, TreesPredictor

        preds = {"mle": MLEPredictor(), "mle-2pass": MLEPredictor(passes=2), "trees-csr": TreesPredictor("trees-csr", args.backend),
                 "trees": TreesPredictor("trees-structure", args.backend)}
        t0 = time.perf_counter()
        dens = tuple(float(d) for d in args.densities.split(","))
        rows = run(preds, tuple(SNR_LEVELS), dens, args.emitters, args.test_sampling)
        text = table(rows)
        checks = verdicts(rows)
        print("\n" + text + "\n\n" + "\n".join(checks))
        print(f"\n({time.perf_counter() - t0:.0f} s)")
        if not args.no_write:
            from ...core.results_md import write_sections

            body = (f"## smlm3d: SNR x density ({args.test_sampling} test frames)\n\n"
                    f"`streamer evaluate --modality smlm3d --emitters {args.emitters} --test-sampling "
                    f"{args.test_sampling} --densities {args.densities}`; trees = structure-trained bundle, frames/s = one core, "
                    f"whole predictor (detection + fit + trees)\n\n{text}\n\n"
                    + "\n".join(f"- {c}" for c in checks))
            write_sections(RESULTS_MD, {f"## smlm3d: SNR x density ({args.test_sampling} test frames)": body})
        return 0
