"""Issue 14 for smlm3d: a model for instrument A meets data of instrument B; calibrate + train for B.

Steps (all on simulations, ground truth known):
1. instrument B differs clearly from the nominal A: stronger astigmatism and other foci (s0 110 -> 130 nm,
   c 250 -> 350 nm, d 500 -> 450 nm, A 0.05 -> 0.1, B 0.02 -> 0.04), 160 nm pixels (100), another
   camera (baseline 100 -> 400 ADU, gain 1 -> 2 ADU/photon, read noise 1.5 -> 3 ADU);
2. B's frames through a worker that has only A's model: once naming B (``instrument`` key; the worker
   was given B's true profile), once naming nothing (B's header: 160 nm pixels) -> flagged share, and
   what A's model would have answered (predictor called directly: RMSE / CRLB, coverage, JI);
3. calibration on B's bead z-stack (simulated; pixel size, baseline and gain from the header, read
   noise given as the camera's): the fitted curve vs B's true one over z in [-750, 750] nm;
4. ``train --instrument`` for the fitted profile (timed; the shipped recipe's set size);
5. low density (<= 1 emitter/frame, structure-sampled test frames, seeds disjoint from training), each
   SNR: B's frames through the worker serving B's bundle (routed by the profile's hash) and A's frames
   through the worker serving the shipped bundle: lateral / axial RMSE over the CRLB of the
   instrument's own curve, interval coverage, JI.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

B_VALUES = {"s0_nm": 130.0, "focus_nm": 350.0, "depth_nm": 450.0, "A": 0.1, "B": 0.04, "pixel_nm": 160.0,
            "baseline": 400.0, "adu_per_photon": 2.0, "read_noise": 3.0}
PACKET = 100        # frames per packet through the worker path
DENSITY = 1.0       # emitters per frame (the low-density cells: <= 1)
PREDICTOR = "trees-xgboost"  # the bundle through XGBoost's predictor: same trees, no per-bundle compile


def test_frames(profile, snr: str, n_emitters: int, seed: int):
    """Structure-sampled frames of ``profile``'s instrument at :data:`DENSITY` (a new structure every
    100 frames; seeds far from training's)."""
    from .instrument import camera_of, psf_of
    from .simulate import SNR_LEVELS, SimConfig, simulate_frames

    N, b = SNR_LEVELS[snr]
    cfg = SimConfig(n_frames=int(np.ceil(n_emitters / DENSITY)), photons=N, background=b, density=DENSITY,
                    sampling="structure", structure_every=100, seed=seed, psf=psf_of(profile),
                    pixel_nm=float(profile["pixel_nm"]), camera=camera_of(profile))
    return simulate_frames(cfg)


def through_worker(served, header: dict, instrument: str | None):
    """``predict(frames, seq) -> (columns, flagged items)`` through the worker's own path."""
    from ...core import registry, wire
    from ...pipeline.worker import serve_raw

    spec = registry.get("smlm3d").packet_kind("frames")

    def predict(frames, seq):
        n, h, w = frames.shape
        res = serve_raw(served, wire.encode_packet("smlm3d", "frames", "bench", seq,
                                                   {**header, "n": n, "height": h, "width": w}, {"frames": frames},
                                                   spec=spec, instrument=instrument))
        return {k: np.array(res.detections[k]) for k in res.detections}, sum(res.invalid.values())

    return predict


def unmarked(predictor, header: dict):
    """``predict`` calling a predictor directly: what the model says before the worker's coverage check."""
    def predict(frames, seq):
        return predictor.predict_frames(frames, header["pixel_nm"], header["baseline"], header["adu_per_photon"]), 0

    return predict


def predict_all(predict, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Localizations of ``frames`` packet by packet (per-frame ``count`` dropped); ``item`` = frame index."""
    from ...core.evaluation import predict_in_packets

    return predict_in_packets(predict, frames, PACKET, skip=("count",))


def metrics(det: dict, truth: dict, profile) -> dict:
    from .evaluate import score_cell
    from .instrument import psf_of

    a = score_cell(det, truth, float(profile["pixel_nm"]), psf_of(profile))
    a["lat"] = a["rmse_lat"] / a["crlb_lat"]
    a["ax"] = a["rmse_ax"] / a["crlb_ax"]
    a["mismatch"] = float((det["flags"] & 64 > 0).mean()) if len(det["flags"]) else float("nan")
    return a


def line(a: dict) -> str:
    ci = lambda k: (f" ({a[k][0]:.2f}-{a[k][1]:.2f})" if np.all(np.isfinite(a.get(k, (np.nan,)))) else "")  # noqa: E731
    return (f"lat {a['lat']:.2f}x{ci('lat_ci')} ax {a['ax']:.2f}x{ci('ax_ci')} CRLB, cov {a['cov_x']:.0%}/"
            f"{a['cov_y']:.0%}/{a['cov_z']:.0%}, JI {a['ji']:.0f}")


def run(workdir: Path, quick: bool = False, log=print, predictor: str = PREDICTOR) -> dict:
    from ...core import profile as prof
    from ...core import registry
    from ...pipeline.worker import Served
    from .calibrate import calibrate_beads, curve_error, simulate_beads
    from .instrument import camera_of, curve_values, header_of, psf_of
    from .instrument_train import PROFILE_CONFIG, train_for_profile
    from .simulate import SNR_LEVELS
    from .train import SPARSE_FACTOR

    mod = registry.get("smlm3d")
    workdir = Path(workdir)
    n_em = 300 if quick else 1500  # true emitters per SNR cell: A's model on B (flags, gross errors)
    # B's model on B against A's model on A (`streamer evaluate --modality smlm3d` scores 10,000 per cell).
    # At 1 emitter/frame on filaments a handful of close pairs decides a ratio (at 20k photons the top
    # 0.5 % of squared errors held ~40 % of the sum): with 1,500 emitters A's own 5k/50 and 20k/200
    # ratios read 1.17x and 1.83x where 10,000 read 1.23x and 1.56x. At 10,000 B's 5k/50 ratio still moved
    # with the draw (1.19x on the bench's, 1.09x and 1.12x on two others: two fits 150-200 nm off
    # held 15 % of the squared error of the first), so both sides get 30,000 (~3x the evaluation time)
    n_cmp = 300 if quick else 30000
    a = prof.nominal(mod)
    b_true = a.with_values(B_VALUES, "bench: instrument B (truth)", "scopeB")
    hdr_a, hdr_b = header_of(a), header_of(b_true)
    snrs = list(SNR_LEVELS)
    data_b = {s: test_frames(b_true, s, n_cmp, 900_001 + i) for i, s in enumerate(snrs)}
    data_a = {s: test_frames(a, s, n_cmp, 900_001 + i) for i, s in enumerate(snrs)}
    # A's model on B: the first n_em emitters' frames of the same draws
    n_fr = int(np.ceil(n_em / DENSITY))
    few_b = {s: (f[:n_fr], {k: v[t["item"] < n_fr] if k != "background" else v[:n_fr] for k, v in t.items()})
             for s, (f, t) in data_b.items()}

    # 2. A's model on B's data
    log("smlm3d: A's model on B's data")
    only_a = Served({"smlm3d": predictor}, [b_true], models_dir=workdir / "no-models")
    plain = Served({"smlm3d": predictor})
    named = {s: predict_all(through_worker(only_a, hdr_b, "scopeB"), few_b[s][0]) for s in snrs}
    header_only = {s: predict_all(through_worker(plain, hdr_b, None), few_b[s][0]) for s in snrs}
    raw = {s: metrics(predict_all(unmarked(plain.predictors["smlm3d"], hdr_b), few_b[s][0]), few_b[s][1], b_true)
           for s in snrs}
    share = lambda runs: np.mean([((d["flags"] & 64) > 0).mean() for d in runs.values()])  # noqa: E731
    no_iv = lambda runs: np.mean([np.isnan(d["x_lo"]).mean() for d in runs.values()])  # noqa: E731

    # 3. calibrate on B's bead z-stack (pixel, baseline and gain from the header; read noise given)
    log("smlm3d: calibrate on B's bead z-stack")
    t0 = time.time()
    beads, z = simulate_beads(psf_of(b_true), camera_of(b_true), b_true["pixel_nm"], n_beads=6, z_step_nm=20.0,
                              z_offset_nm=40.0, seed=77)
    cal = calibrate_beads(beads, z, hdr_b["pixel_nm"], hdr_b["baseline"], hdr_b["adu_per_photon"])
    cal_s = time.time() - t0
    err = curve_error(cal.psf, psf_of(b_true))
    b_fit = a.with_values({**hdr_b, "read_noise": B_VALUES["read_noise"]}, "given (header / camera sheet)", "scopeB")
    b_fit = b_fit.with_values(curve_values(cal.psf), "calibrate beads-B")
    b_fit.save(workdir / "scopeB.toml")

    # 4. train for the fitted profile
    log("smlm3d: train for B")
    cfg = dict(PROFILE_CONFIG)
    if quick:
        cfg.update(n_chunks=40, cal_factor=1.0, rounds=30)
    manifest, train_s = train_for_profile(b_fit, workdir / "models" / "smlm3d" / "trees-scopeB", cfg)

    # 5. B's model on B's data through the worker (routed by the hash); A's model on A's data
    log("smlm3d: B's model on B's data; A's model on A's data")
    served_b = Served({"smlm3d": predictor}, [b_fit], models_dir=workdir / "models")
    if "trees-scopeB" not in served_b.model_ids():
        raise RuntimeError(f"the worker did not load B's bundle: {served_b.model_ids()}")
    bb = {s: metrics(predict_all(through_worker(served_b, hdr_b, "scopeB"), data_b[s][0]), data_b[s][1], b_true)
          for s in snrs}
    aa = {s: metrics(predict_all(through_worker(plain, hdr_a, None), data_a[s][0]), data_a[s][1], a) for s in snrs}

    def verdict(r: dict, ref: dict | None) -> str:
        """Per SNR: the issue-17 low-density targets (lat <= 1.15x, ax <= 1.25x CRLB, coverage 87-93 %),
        or, where A's model on A misses one, no worse than A's (+0.05 ratio, -2 points coverage)."""
        bad = []
        for s in snrs:
            x, y = r[s], (ref or {}).get(s)
            for key, lim in (("lat", 1.15), ("ax", 1.25)):
                if x[key] > lim and (y is None or x[key] > y[key] + 0.05):
                    bad.append(f"{s} {key} {x[key]:.2f}x")
            for c in "xyz":
                v = x[f"cov_{c}"]
                if not (0.87 <= v <= 0.93) and (y is None or abs(v - 0.9) > abs(y[f"cov_{c}"] - 0.9) + 0.02):
                    bad.append(f"{s} cov {c} {v:.1%}")
            if any(x[k] > 0 for k in ("mismatch",)):
                bad.append(f"{s} flagged {x['mismatch']:.0%}")
        text = "; ".join(f"{s}: {line(r[s])}" for s in snrs)
        return ("PASS" if not bad else "FAIL " + ", ".join(bad)) + ": " + text

    t = manifest["training"]
    rows = ("lat", "ax", "rmse_lat", "crlb_lat", "rmse_ax", "crlb_ax", "cov_x", "cov_y", "cov_z", "ji", "tp", "fp",
            "fn", "mismatch")
    detail = (f"smlm3d, through the worker path (`serve_raw`, predictor `{predictor}`: the bundles' trees on "
              f"XGBoost's predictor, the same trees `trees` runs compiled), structure-sampled test frames at "
              f"{DENSITY:g} emitter/frame, {n_cmp:,} emitters per SNR ({n_em:,} for A's model on B; ratios with "
              f"their 90 % bootstrap interval over blocks of 100 frames, one structure each); CRLB of the instrument's own curve and pixel "
              f"size at the true positions (isolated emitter, 13x13 window).\n\n"
              "| SNR | figure | A's model on B (unflagged) | B's model on B | A's model on A |\n|---|---|---|---|---|\n"
              + "\n".join(f"| {s} | {k} | {fmt(raw[s][k])} | {fmt(bb[s][k])} | {fmt(aa[s][k])} |"
                          for s in snrs for k in rows)
              + "\n\nCalibration of B:\n\n" + "\n".join(f"- {ln}" for ln in cal.lines())
              + f"\n- largest |sigma_fit / sigma_true - 1| over z -750..750 nm: {err:.2%}"
              + "\n\nB's bundle covers: " + ", ".join(f"{k} {lo:g}-{hi:g}" for k, (lo, hi) in
                                                     manifest["instrument"]["covers"].items()))
    return {
        "modality": "smlm3d",
        "A -> B": "curve s0 110 -> 130 nm, foci +-250 -> +-350 nm, d 500 -> 450 nm, A 0.05 -> 0.1, B 0.02 -> 0.04; "
                  "pixel 100 -> 160 nm; baseline 100 -> 400 ADU, gain 1 -> 2 ADU/photon, read noise 1.5 -> 3 ADU",
        "A's model on B": f"flagged {share(named):.0%} of detections (stream names B), {share(header_only):.0%} "
                          f"(names nothing; header pixel 160 nm); intervals dropped {no_iv(named):.0%}. Unflagged it "
                          f"would say: " + "; ".join(f"{s}: {line(raw[s])}" for s in snrs),
        "calibration": f"curve within {err:.2%} of B's sigma over z -750..750 nm (target 3 %): s0 {cal.psf.s0:.1f} (130), "
                       f"c {cal.psf.c:.1f} (350), d {cal.psf.d:.1f} (450), A {cal.psf.A:.3f} (0.1), B {cal.psf.B:.3f} "
                       f"(0.04); residual rms {cal.residual_rms_nm:.2f} nm; {cal.beads} beads x {len(z)} frames, "
                       f"{cal_s:.1f} s",
        "training": f"{train_s:.0f} s ({t['chunks']} chunks x 50 frames + {int(round(SPARSE_FACTOR * t['chunks']))} sparse "
                    f"tuning + {int(round(cfg['cal_factor'] * t['chunks']))} "
                    f"calibration chunks, {t['candidates']:,} training candidates; "
                    + ("quick: a smaller set)" if quick else "the shipped recipe's size)"),
        "B's model on B": verdict(bb, aa),
        "A's model on A": verdict(aa, None),
        "detail": detail,
    }


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
