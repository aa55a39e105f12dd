"""Issue 14 for diffusion: a model for instrument A meets data of instrument B; calibrate + train for B.

Steps (all on simulations, ground truth known):
1. instrument B differs clearly from the nominal A (pixel 108 vs 200 nm, frames 5 vs 10 ms, PSF FWHM
   350 vs 250 nm, another camera);
2. B's stacks through a worker that has only A's model: once naming B (``instrument`` key; the worker
   was given B's profile), once naming nothing (B's header: pixel size, frame period) -> flagged share,
   and what A's model would have answered (its error, its interval coverage before being dropped);
3. ``streamer calibrate`` on simulated immobilized beads of B -> fitted profile (vs B's true values);
4. ``streamer train --instrument`` for the fitted profile (timed);
5. the evaluation grid on B with B's bundle, through the worker (routed by profile hash), against
   the same targets as A's own (trees <= 0.7 x trajectory-D and <= CVE, coverage 87-93 % per cell).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

CHUNK = 128  # stacks per packet through the worker path (16x64x64 u2: 16 MB, under the packet limit)
B_VALUES = {"pixel_nm": 108.0, "frame_s": 0.005, "fwhm_nm": 350.0, "adu_per_photon": 0.5, "baseline": 400.0,
            "read_sigma": 2.5}


class _ThroughWorker:
    """A predictor-like object that runs each packet through the worker's own path (routing by
    instrument, coverage check, mismatch marking), so the bench measures what a user gets."""

    def __init__(self, served, instrument: str | None):
        self.served, self.instrument = served, instrument
        self.flagged = self.items = 0

    def predict(self, packet) -> dict:
        from ...core import registry, wire
        from ...pipeline.worker import serve_raw

        spec = registry.get("diffusion").packet_kind("stacks")  # (not `from . import`: no import circle)

        res = serve_raw(self.served, wire.encode_packet("diffusion", "stacks", "bench", packet.seq,
                                                        {**packet.header, "n": packet.n}, packet.arrays, spec=spec,
                                                        instrument=self.instrument))
        self.items += res.n
        self.flagged += sum(res.invalid.values())
        return {k: np.array(v) for k, v in res.items.items()}


def run(workdir: Path, quick: bool = False, log=print) -> dict:
    from ...core import profile as prof
    from ...core import registry
    from ...core.recording import Recording
    from ...pipeline.worker import Served
    from .calibrate import calibrate_beads
    from .evaluate import run_grid, table
    from .instrument import optics_of_profile
    from .model import train
    from .physics import Optics, simulate
    from .predictors import TrackBaseline

    mod = registry.get("diffusion")
    workdir = Path(workdir)
    # 2,000 stacks per cell (coverage s.e. ~0.7 %), not the 700 of `streamer evaluate --modality diffusion`
    # (s.e. ~1.1 %): B's misses at 700 (trees/traj-D 0.72, coverage 86.7 %) lay within noise of the targets
    per_cell = 120 if quick else 2000
    a = prof.nominal(mod)
    b_true = a.with_values(B_VALUES, "bench: instrument B (truth)", "scopeB")
    op_b = optics_of_profile(b_true)

    # 2. A's model on B's data
    log("diffusion: A's model on B's data")
    only_a = Served({"diffusion": "trees"}, [b_true], models_dir=workdir / "no-models")
    named, header_only = _ThroughWorker(only_a, "scopeB"), _ThroughWorker(Served({"diffusion": "trees"}), None)
    rows_ab = run_grid({"named": named, "header": header_only, "msd": TrackBaseline("msd"),
                        "cve": TrackBaseline("cve")}, per_cell=per_cell // 2, seed=21, op=op_b, chunk=CHUNK)
    raw_a = Served({"diffusion": "trees"}).predictors["diffusion"]  # what A's model says, unmarked
    rows_raw = run_grid({"trees": raw_a, "msd": TrackBaseline("msd"), "cve": TrackBaseline("cve")},
                        per_cell=per_cell // 2, seed=21, op=op_b, chunk=CHUNK)
    _, _, cells_raw = table(rows_raw, op_b)
    err_a = float(np.median(np.abs(np.log(np.maximum(rows_raw.out["trees"]["D"], 1e-4) / rows_raw.d))))
    cov_a = float(np.mean((rows_raw.out["trees"]["D_lo"] <= rows_raw.d) & (rows_raw.d <= rows_raw.out["trees"]["D_hi"])))
    with_interval = float(np.mean(np.isfinite(rows_ab.out["named"]["D_lo"])))

    # 3. calibrate on simulated beads of B
    log("diffusion: calibrate on beads of B")
    rng = np.random.default_rng(31)
    beads = simulate(rng, np.zeros(200), np.full(200, 2000.0), rng.uniform(0.5, 4.0, 200), op_b).stacks
    header = {"frames": op_b.frames, "height": op_b.height, "width": op_b.width, "pixel_nm": op_b.pixel_nm,
              "frame_s": op_b.frame_s, "exposure_s": op_b.exposure, "baseline": op_b.baseline,
              "adu_per_photon": 1.0}  # the header's gain is a guess: calibration measures it
    Recording("diffusion", "stacks", {"stacks": beads}, header).save(workdir / "beads-B.npz")
    fit = calibrate_beads(beads, op_b.pixel_nm, op_b.baseline)
    b_fit = b_true.with_values({"fwhm_nm": fit.fwhm_nm, "adu_per_photon": fit.gain, "read_sigma": fit.read_sigma},
                               "calibrate beads-B.npz")
    b_fit.save(workdir / "scopeB.toml")

    # 4. train for the fitted profile
    log("diffusion: train for B")
    t0 = time.time()
    bundle = workdir / "models" / "diffusion" / "trees-scopeB"
    n_train, n_cal = (6000, 4000) if quick else (30000, 16000)
    train(bundle, n_train=n_train, n_cal=n_cal, instrument=b_fit, log=lambda *_: None)
    train_s = time.time() - t0

    # 5. B's model on B's data, through the worker (routed by the profile's hash)
    log("diffusion: B's model on B's data")
    served_b = Served({"diffusion": "trees"}, [b_fit], models_dir=workdir / "models")
    via = _ThroughWorker(served_b, "scopeB")
    rows_bb = run_grid({"trees": via, "msd": TrackBaseline("msd"), "cve": TrackBaseline("cve")},
                       per_cell=per_cell, seed=23, op=op_b, chunk=CHUNK)
    text_bb, ok_bb, cells_bb = table(rows_bb, op_b)
    rows_aa = run_grid({"trees": raw_a, "msd": TrackBaseline("msd"), "cve": TrackBaseline("cve")},
                       per_cell=per_cell, seed=23, op=Optics())
    _, ok_aa, cells_aa = table(rows_aa, Optics())

    def verdict(cells):
        bad = sum(not c["ok"] for c in cells)
        return (f"PASS in all {len(cells)} cells" if not bad else f"FAIL in {bad} of {len(cells)} cells") + \
            f" (trees <= 0.7 x traj-D and <= CVE, coverage 87-93 %): {summary(cells)}"

    def summary(cells):
        ratio = max(c["med_trees"] / c["med_msd"] for c in cells)
        cov = (min(c["coverage"] for c in cells), max(c["coverage"] for c in cells))
        return f"worst trees/traj-D {ratio:.2f}, coverage {cov[0]:.1%}-{cov[1]:.1%}"

    return {
        "modality": "diffusion",
        "A -> B": "pixel 200 -> 108 nm, frame 10 -> 5 ms, PSF FWHM 250 -> 350 nm, gain 2 -> 0.5 ADU/photon, "
                  "offset 100 -> 400 ADU, read noise 1.6 -> 2.5 e-",
        "A's model on B": f"flagged {named.flagged / max(named.items, 1):.0%} (stream names B), "
                          f"{header_only.flagged / max(header_only.items, 1):.0%} (names nothing; header pixel/frame "
                          f"differ); intervals kept {with_interval:.0%}. Unflagged it would say: median |ln(D_hat/D)| "
                          f"{err_a:.3f}, coverage {cov_a:.1%} ({summary(cells_raw)})",
        "calibration": f"FWHM {fit.fwhm_nm:.1f} nm (true 350), gain {fit.gain:.3f} (0.5), read noise "
                       f"{fit.read_sigma:.2f} e- (2.5), from 200 bead stacks",
        "training": f"{train_s:.0f} s ({n_train:,} + {n_cal:,} stacks)",
        "B's model on B": verdict(cells_bb),
        "A's model on A": verdict(cells_aa),
        "detail": "Diffusion, B's model on B's data (per cell):\n\n" + text_bb,
    }
