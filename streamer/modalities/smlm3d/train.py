"""Training of the smlm3d trees bundles (CSR- or structure-sampled simulations), minutes on 2 cores.

Data: chunks of frames, each with one SNR level (seed 002) and a density drawn log-uniformly in
[0.3, 16] emitters/frame; structure chunks draw new filaments every frame (seed 002's on-the-fly
protocol). Chunks are split train / calibration (never mixed), so the conformal quantiles come
from frames the trees never saw.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .features import FEATURE_NAMES, features
from .localize import DUPLICATE, REJECTED, localize
from .metrics import LATERAL_TOL, efficiency, match
from .model import (BG_EDGES, COUNT_EDGES, MODEL_DIR, N_GROUPS, SCALE_BINS, ambiguous, background_bin,
                    conformal_groups, conformal_quantiles, crowding_bin, groups, imprecise_pairs, row_thresholds)
from .psf import DEFAULT_PSF
from .simulate import SNR_LEVELS, SimConfig, simulate_frames

N_ITER = 20
PASSES = 2
# a "good" localization (the classifier's positive class): matched, and lateral error below
# GOOD_SD x the CRLB's lateral sd + GOOD_LAT_NM, axial below GOOD_SD_Z x sd_z + GOOD_AX_NM
GOOD_SD, GOOD_LAT_NM, GOOD_SD_Z, GOOD_AX_NM = 3.0, 5.0, 4.0, 10.0
#: the sparse-acquisition cut (:func:`.model.sparse_packet_cut`) every new bundle records; chosen on
#: development draws of the structure-trained bundle (seeds 20000, 30000; score 0.8-0.97 measured,
#: merged_lr 12-30 and merged_sep_nm 200-300 at 100 nm pixels: :func:`.model.merged_singles`;
#: pair_precision_k 1.5-3: :func:`.model.imprecise_pairs`)
SPARSE_PACKET = {"score": 0.9, "below_per_frame": 1.4, "frame_max": 6, "min_frames": 20,
                 "merged_lr": 16.0, "merged_sep_nm": 200.0, "pair_precision_k": 3.0}
GOOD_KEEP = 0.97   # score thresholds keep at least this share of the good localizations' scores above
# sparse tuning simulation (SPARSE_FACTOR x the training chunks, densities SPARSE_DENSITY): the sparse-frame
# thresholds were otherwise chosen on ~250 emitters per SNR, too few to see the merged pairs they must drop
SPARSE_FACTOR, SPARSE_DENSITY = 0.75, (0.3, 1.5)
CONFORMAL_GROUPS = ("background [25, 100] x candidates/frame [3, 7] x nearest candidate px [3, 6, 12] x "
                    "predicted lateral log error scale (quartiles of the calibration set: scale_edges)")


def make_dataset(sampling: str, n_chunks: int, frames_per_chunk: int = 50, seed: int = 0,
                 pixel_nm: float = 100.0, baseline: bool = True, psf=None, camera=None,
                 progress=None, density_range: tuple[float, float] = (0.3, 16.0)) -> dict[str, np.ndarray]:
    """Features, targets (residual / CRLB), match labels and chunk ids of simulated candidates
    (``baseline``: also the one-pass MLE's per-frame TP / FP on the same frames). ``psf`` / ``camera``:
    the instrument simulated (default: the nominal one; issue 14 trains for a user's profile);
    ``progress()`` is called once per chunk; each chunk's density is log-uniform in ``density_range``."""
    from .simulate import Camera

    psf = psf or DEFAULT_PSF
    camera = camera or Camera()
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {k: [] for k in ("X", "t", "label", "chunk", "sd", "fit", "truth", "item", "drop",
                                            "n_true", "frame_true", "frame_cand", "frame_chunk",
                                            "frame_mle_tp", "frame_mle_fp")}
    levels = list(SNR_LEVELS.values())
    for c in range(n_chunks):
        N, b = levels[c % len(levels)]
        dens = float(np.exp(rng.uniform(np.log(density_range[0]), np.log(density_range[1]))))
        cfg = SimConfig(n_frames=frames_per_chunk, photons=N, background=b, density=dens,
                        sampling=sampling, structure_every=1, seed=int(rng.integers(1 << 31)),
                        pixel_nm=pixel_nm, psf=psf, camera=camera)
        frames, truth = simulate_frames(cfg)
        L = localize(frames, pixel_nm=pixel_nm, baseline=camera.baseline, adu_per_photon=camera.adu_per_photon,
                     n_iter=N_ITER, passes=PASSES, psf=psf)
        X = features(L, pixel_nm)
        T = np.column_stack([truth["x"], truth["y"], truth["z"]])
        keep = (L.flags & DUPLICATE) == 0
        ie, it = match(L.item[keep], L.xyz[keep], truth["item"], T)
        ie = np.nonzero(keep)[0][ie]
        label = np.zeros(len(L), np.int8)
        label[ie] = 1
        t = np.full((len(L), 4), np.nan)
        t[ie, :3] = (T[it] - L.xyz[ie]) / L.sd[ie]
        sd_logn = L.fit.sd[ie, 3] / np.maximum(L.photons[ie], 1.0)
        t[ie, 3] = np.log(truth["photons"][it] / np.maximum(L.photons[ie], 1.0)) / sd_logn
        tt = np.full((len(L), 3), np.nan)
        tt[ie] = T[it]
        # what the served model rejects whatever the score (model.apply): duplicates, imprecise and
        # ambiguous pairs; the conformal quantiles are fitted on the rest, as served
        cnt = crowding_bin(X)
        drop = ((L.flags & DUPLICATE) != 0) | imprecise_pairs(L, cnt, pixel_nm, psf) | ambiguous(L, cnt)
        out["X"].append(X), out["t"].append(t), out["label"].append(label), out["drop"].append(drop)
        out["chunk"].append(np.full(len(L), c)), out["sd"].append(L.sd), out["fit"].append(L.xyz)
        out["truth"].append(tt), out["item"].append(L.item + c * frames_per_chunk)
        out["n_true"].append(np.array([len(T)]))
        out["frame_true"].append(np.bincount(truth["item"], minlength=frames_per_chunk))
        # the one-pass MLE baseline on the same frames: per-frame TP / FP, the JI floor of sparse frames
        tp_b = fp_b = np.zeros(frames_per_chunk, np.int64)
        if baseline:
            B = localize(frames, pixel_nm=pixel_nm, baseline=camera.baseline, adu_per_photon=camera.adu_per_photon,
                         n_iter=N_ITER, passes=1, psf=psf)
            kb = (B.flags & REJECTED) == 0
            be, _ = match(B.item[kb], B.xyz[kb], truth["item"], T)
            tp_b = np.bincount(B.item[kb][be], minlength=frames_per_chunk)
            fp_b = np.bincount(B.item[kb], minlength=frames_per_chunk) - tp_b
        out["frame_mle_tp"].append(tp_b)
        out["frame_mle_fp"].append(fp_b)
        out["frame_cand"].append(np.bincount(L.item, minlength=frames_per_chunk))
        out["frame_chunk"].append(np.full(frames_per_chunk, c))
        if progress is not None:
            progress()
    return {k: np.concatenate(v) for k, v in out.items()}


def _choose_threshold(score, label, err_lat, err_ax, n_true: int, min_ji: float = -np.inf) -> float:
    """Score threshold maximising the pooled 3D efficiency on calibration candidates, among those
    whose Jaccard index is at least ``min_ji`` (sparse frames: never fewer detections than the
    MLE baseline on the same frames; trading detections for RMSE is left to crowded frames)."""
    def jaccard(keep):
        tp = int((keep & (label == 1)).sum())
        return 100.0 * tp / max(n_true + int((keep & (label == 0)).sum()), 1)

    floor = min_ji
    best, best_t = -np.inf, 0.05
    for thr in np.linspace(0.02, 0.99, 98):
        keep = score >= thr
        tp = int((keep & (label == 1)).sum())
        ji = jaccard(keep)
        if ji < floor:
            continue
        sel = keep & (label == 1)
        lat = np.sqrt(np.mean(err_lat[sel] ** 2)) if tp else 1e3
        ax = np.sqrt(np.mean(err_ax[sel] ** 2)) if tp else 1e3
        e = 0.5 * (efficiency(ji, lat, 1.0) + efficiency(ji, ax, 0.5))
        if e > best:
            best, best_t = e, float(thr)
    return best_t


SHRINK_GRID = np.linspace(0.0, 1.0, 5)


def choose_shrink(fit: np.ndarray, corr: np.ndarray, truth: np.ndarray, g: np.ndarray, use: np.ndarray,
                  min_rows: int = 100) -> np.ndarray:
    """(N_GROUPS, 3) weight of the trees' correction per Mondrian group and coordinate: the grid value
    with the smallest squared error of ``fit + w * corr`` on the ``use`` rows; groups with fewer than
    ``min_rows`` rows take the weight chosen on all rows of their nearest-candidate bin."""
    from .model import N_GROUPS, NN_EDGES

    def best(rows):
        e = truth[rows][None] - fit[rows][None] - SHRINK_GRID[:, None, None] * corr[rows][None]
        return SHRINK_GRID[np.argmin((e * e).sum(1), axis=0)]

    n_nn = len(NN_EDGES) + 1
    pooled = {b: best(use & (g % n_nn == b)) if (use & (g % n_nn == b)).sum() >= min_rows else np.ones(3)
              for b in range(n_nn)}
    out = np.ones((N_GROUPS, 3))
    for gi in range(N_GROUPS):
        rows = use & (g == gi)
        out[gi] = best(rows) if rows.sum() >= min_rows else pooled[gi % n_nn]
    return out


def train_bundle(sampling: str, name: str, n_chunks: int = 120, seed: int = 0, rounds: int = 60,
                 out_root: Path = MODEL_DIR, verbose: bool = True, data: dict | None = None,
                 cal_factor: float = 2.0, psf=None, camera=None, pixel_nm: float = 100.0,
                 instrument: dict | None = None, progress=None, nthread: int = 2,
                 recalibrate: bool = False, retune: bool = False) -> dict:
    """Simulate (or take ``data`` from ``make_dataset``), train the three ensembles, calibrate, save.

    ``psf`` / ``camera`` / ``pixel_nm``: the instrument simulated (issue 14); ``instrument``: the
    manifest's profile entry (hash, covered ranges); ``progress()``: called per simulated chunk.
    ``recalibrate``: keep the bundle's ensembles, correction weights and score thresholds, redo only
    the conformal quantiles (on the same simulations: what changed is what the served model keeps);
    ``retune``: the same, with the score thresholds chosen anew (:func:`_thresholds`) first."""
    import xgboost as xgb

    psf = psf or DEFAULT_PSF
    sim = {"pixel_nm": pixel_nm, "psf": psf, "camera": camera, "progress": progress}
    t0 = time.perf_counter()
    D = make_dataset(sampling, n_chunks, seed=seed, **sim) if data is None else data
    n_true_total = int(D["n_true"].sum())
    cal_chunks = np.arange(n_chunks) % 4 == 3          # every 4th chunk: calibration (all SNRs)
    is_cal = cal_chunks[D["chunk"]]
    lab = D["label"] == 1
    tr = ~is_cal
    if verbose:
        print(f"[{name}] {len(D['X'])} candidates ({lab.sum()} matched) from {n_chunks} chunks "
              f"in {time.perf_counter() - t0:.0f} s")
    if recalibrate or retune:
        return _recalibrate(D, sampling, name, n_chunks, seed, out_root, cal_factor, sim, verbose, t0, retune)
    params = dict(tree_method="hist", max_depth=6, eta=0.15, subsample=0.8, colsample_bytree=0.8,
                  min_child_weight=20, nthread=nthread, seed=seed)
    y = np.clip(D["t"][tr & lab], -20, 20)
    reg = xgb.train({**params, "objective": "reg:pseudohubererror", "huber_slope": 2.0,
                     "multi_strategy": "one_output_per_tree"},
                    xgb.DMatrix(D["X"][tr & lab], label=y), num_boost_round=rounds)
    # score = P(a *good* localization): matched, and not one of a merged pair (errors of many CRLBs),
    # so the efficiency-tuned cut can drop the fits that dominate the RMSE
    good = _good(D)
    clf = xgb.train({**params, "max_depth": 5, "objective": "binary:logistic", "eval_metric": "logloss"},
                    xgb.DMatrix(D["X"][tr], label=good[tr].astype(np.float32)), num_boost_round=rounds)
    # typical |error| / CRLB of the fit (log), the conformal normaliser
    ys = np.log(np.abs(D["t"][tr & lab][:, :3]) + 0.1)
    scale = xgb.train({**params, "max_depth": 5, "objective": "reg:squarederror",
                       "multi_strategy": "one_output_per_tree"},
                      xgb.DMatrix(D["X"][tr & lab], label=ys), num_boost_round=max(rounds // 2, 10))
    # held-out chunks, two halves: "tune" picks the correction weights and the score thresholds,
    # "conf" (c % 8 == 7, never used for anything else) gives the conformal quantiles (_conformal)
    tune_chunks = _tune_chunks(n_chunks)
    Xc = D["X"][is_cal]
    pred = reg.inplace_predict(Xc).reshape(len(Xc), 4)
    gc = groups(Xc)
    in_tune = tune_chunks[D["chunk"][is_cal]]
    shrink = choose_shrink(D["fit"][is_cal], pred[:, :3] * D["sd"][is_cal], D["truth"][is_cal], gc,
                           lab[is_cal] & in_tune)
    thr, tuning = _score_thresholds((reg, clf), shrink, D, sampling, n_chunks, seed, sim)
    q, scale_edges, n_conf, n_cal = _conformal((reg, clf, scale), shrink, thr, D, sampling, n_chunks, seed,
                                               cal_factor, sim)
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    reg.save_model(str(out / "reg.ubj"))
    clf.save_model(str(out / "cls.ubj"))
    scale.save_model(str(out / "scale.ubj"))
    manifest = {
        "name": name, "modality": "smlm3d", "format_version": 1, "sampling": sampling,
        "feature_names": list(FEATURE_NAMES), "reg": "reg.ubj", "cls": "cls.ubj", "scale": "scale.ubj",
        "reg_targets": ["dx/sd_x", "dy/sd_y", "dz/sd_z", "dlogN/sd_logN"],
        "score_threshold": thr.round(3).tolist(),
        "score_threshold_bins": f"background {list(BG_EDGES)} x candidates/frame {list(COUNT_EDGES)}",
        "score_threshold_tuning": tuning,
        "sparse_packet": dict(SPARSE_PACKET),
        "shrink": shrink.round(2).tolist(),
        "fit_iterations": N_ITER, "passes": PASSES, "psf": psf.to_dict(), "pixel_nm": pixel_nm,
        "conformal": {"level": 0.9, "score": "|truth - estimate| / (CRLB(fit) * exp(scale))",
                      "groups": CONFORMAL_GROUPS, "scale_edges": scale_edges,
                      "calibrated_on": f"kept localizations (score above threshold; no duplicate, imprecise or "
                                       f"ambiguous pair): held-out chunks (c % 8 == 7) + {n_cal} fresh chunks",
                      "scores": n_conf,
                      "q": q.round(4).tolist()},
        "training": {"chunks": n_chunks, "frames_per_chunk": 50, "candidates": int(len(D["X"])),
                     "matched": int(lab.sum()), "true_emitters": n_true_total, "rounds": rounds,
                     "snr_levels": list(SNR_LEVELS), "density": "log-uniform 0.3-16 /frame",
                     "seconds": round(time.perf_counter() - t0, 1), "seed": seed},
        "lateral_tol_nm": LATERAL_TOL,
    }
    if instrument:
        manifest["instrument"] = instrument
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if verbose:
        size = sum(p.stat().st_size for p in out.glob("*.ubj"))
        print(f"[{name}] thresholds {thr.round(2).tolist()}, bundle {size / 1e6:.2f} MB, {time.perf_counter() - t0:.0f} s")
    return manifest


def _tune_chunks(n_chunks: int) -> np.ndarray:
    """The held-out "tune" chunks (c % 8 == 3): correction weights and score thresholds are chosen on them."""
    return np.arange(n_chunks) % 8 == 3


def _good(D: dict) -> np.ndarray:
    """The classifier's positive class: matched, and not one of a merged pair (errors of many CRLBs)."""
    tt = np.nan_to_num(np.abs(D["t"][:, :3]), nan=np.inf)
    err_nm = tt * D["sd"]
    return (D["label"] == 1) \
        & (np.hypot(err_nm[:, 0], err_nm[:, 1]) < GOOD_SD * np.hypot(D["sd"][:, 0], D["sd"][:, 1]) + GOOD_LAT_NM) \
        & (err_nm[:, 2] < GOOD_SD_Z * D["sd"][:, 2] + GOOD_AX_NM)


def _tuning_set(boosters, shrink, D: dict, tune_chunks: np.ndarray, S: dict | None = None) -> dict:
    """What the score thresholds are chosen on: the candidates and frames of ``D``'s tune chunks, plus
    every candidate and frame of ``S`` (the sparse tuning simulation). Per candidate: score, matched,
    good, lateral / axial error of the corrected estimate, background and crowding bin; per frame:
    true emitters, the one-pass MLE's TP / FP, background and crowding bin."""
    reg, clf = boosters[:2]
    levels = list(SNR_LEVELS.values())
    parts = []
    for data, chunks in ((D, tune_chunks), (S, None)):
        if data is None:
            continue
        n_chunks = int(data["frame_chunk"].max()) + 1
        rows = np.ones(len(data["X"]), bool) if chunks is None else chunks[data["chunk"]]
        frames = np.ones(len(data["frame_chunk"]), bool) if chunks is None else chunks[data["frame_chunk"]]
        X = data["X"][rows]
        pred = reg.inplace_predict(X).reshape(len(X), 4)
        est = data["fit"][rows] + shrink[groups(X)] * pred[:, :3] * data["sd"][rows]
        err = data["truth"][rows] - est
        chunk_bg = np.digitize([levels[c % len(levels)][1] for c in range(n_chunks)], BG_EDGES)
        parts.append({
            "score": clf.inplace_predict(X), "label": data["label"][rows] == 1, "good": _good(data)[rows],
            "err_lat": np.nan_to_num(np.hypot(err[:, 0], err[:, 1])), "err_ax": np.nan_to_num(err[:, 2]),
            "bg": background_bin(X), "cnt": crowding_bin(X),
            "f_true": data["frame_true"][frames], "f_tp": data["frame_mle_tp"][frames],
            "f_fp": data["frame_mle_fp"][frames], "f_bg": chunk_bg[data["frame_chunk"][frames]],
            "f_cnt": np.digitize(data["frame_cand"][frames], COUNT_EDGES)})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _score_thresholds(boosters, shrink, D: dict, sampling: str, n_chunks: int, seed: int, sim: dict):
    """(thresholds, what they were tuned on): :func:`_thresholds` on ``D``'s tune chunks plus a freshly
    simulated sparse tuning set (SPARSE_FACTOR x n_chunks chunks at SPARSE_DENSITY)."""
    n_sparse = int(round(SPARSE_FACTOR * n_chunks))
    S = make_dataset(sampling, n_sparse, seed=seed + 2_000_003, density_range=SPARSE_DENSITY, **sim) if n_sparse \
        else None
    thr = _thresholds(_tuning_set(boosters, shrink, D, _tune_chunks(n_chunks), S))
    return thr, (f"held-out chunks (c % 8 == 3) + {n_sparse} sparse chunks "
                 f"(density {SPARSE_DENSITY[0]}-{SPARSE_DENSITY[1]}/frame)")


def _thresholds(T: dict) -> np.ndarray:
    """One score threshold per background level x frame-crowding bin (both observable: the fitted
    background and the candidates of the frame), chosen on the tuning set ``T`` (:func:`_tuning_set`).

    Crowded frames: the cut maximising the 3D efficiency, raised to the score that keeps GOOD_KEEP of
    the good localizations (the efficiency barely sees a few merged close pairs at 20k photons, yet
    their 30-nm errors are ~10 CRLBs). Sparse frames (<= 2 candidates): precision first within the
    physics baseline's detections: the highest cut up to that GOOD_KEEP score whose Jaccard index
    on the same frames stays at least the one-pass MLE's (never the efficiency cut alone: there
    isolated emitters dominate, and the few merged pairs it keeps dominate the RMSE)."""
    thr = np.zeros((len(BG_EDGES) + 1, len(COUNT_EDGES) + 1))
    grid = np.linspace(0.02, 0.99, 98)
    for j in range(len(BG_EDGES) + 1):
        for k in range(len(COUNT_EDGES) + 1):
            fr = (T["f_cnt"] == k) & (T["f_bg"] == j)
            sel = (T["cnt"] == k) & (T["bg"] == j)
            n_true = int(T["f_true"][fr].sum())
            ji_mle = 100.0 * T["f_tp"][fr].sum() / max(n_true + T["f_fp"][fr].sum(), 1)
            score, label = T["score"][sel], T["label"][sel]
            t_eff = _choose_threshold(score, label.astype(int), T["err_lat"][sel], T["err_ax"][sel], n_true,
                                      ji_mle if k == 0 else -np.inf)
            g_sc = score[T["good"][sel]]
            t_prec = float(np.quantile(g_sc, 1.0 - GOOD_KEEP)) if len(g_sc) >= 50 else t_eff
            if k > 0:
                thr[j, k] = max(t_eff, t_prec)
                continue
            ji = np.array([100.0 * (label & (score >= t)).sum() / max(n_true + (~label & (score >= t)).sum(), 1)
                           for t in grid])
            ok = grid[(grid <= t_prec) & (ji >= ji_mle)]
            thr[j, k] = max(t_eff, float(ok.max())) if len(ok) else t_eff
    return thr


def _conformal(boosters, shrink, thr, D, sampling, n_chunks, seed, cal_factor, sim):
    """(quantiles, scale edges, scores, fresh chunks): the conformal step of :func:`train_bundle`.

    Calibration set: the held-out "conf" chunks of ``D`` plus ``cal_factor`` x n_chunks freshly
    simulated chunks (own seed, so other structures): 36 groups x SCALE_BINS need thousands of scores
    each for their quantiles to land within ~1 % coverage (a few hundred left them +-3 % off, measured)."""
    conf = (np.arange(n_chunks) % 8 == 7)[D["chunk"]]   # a half of the calibration chunks (c % 4 == 3)
    parts = [_kept_scores(boosters, shrink, thr, D["X"], D["fit"], D["sd"], D["truth"],
                          (D["label"] == 1) & conf & ~D["drop"])]
    n_cal = int(round(cal_factor * n_chunks))
    if n_cal:
        C = make_dataset(sampling, n_cal, seed=seed + 1_000_003, baseline=False, **sim)
        parts.append(_kept_scores(boosters, shrink, thr, C["X"], C["fit"], C["sd"], C["truth"],
                                  (C["label"] == 1) & ~C["drop"]))
    s, X, ls = (np.concatenate(c) for c in zip(*parts))
    edges = np.quantile(ls[:, :2].mean(axis=1), np.linspace(0, 1, SCALE_BINS + 1)[1:-1]).round(4).tolist()
    g = conformal_groups(X, ls, edges)
    return conformal_quantiles(s, g, n_groups=N_GROUPS * SCALE_BINS), edges, len(s), n_cal


def _kept_scores(boosters, shrink, thr, X, fit, sd, truth, use):
    """Conformal scores |truth - estimate| / (CRLB * exp(scale)), features and log scales of the
    localizations the served model keeps (``use``: labelled, in the calibration rows, not dropped;
    and here: score above its bin's threshold): calibrating on every matched candidate would let the
    rejected, badly fitted ones inflate the quantiles and over-cover what is reported."""
    reg, clf, scale = boosters
    pr = reg.inplace_predict(X).reshape(len(X), 4)
    sc = clf.inplace_predict(X)
    lsc = scale.inplace_predict(X).reshape(len(X), 3)
    g = groups(X)
    est = fit + shrink[g] * pr[:, :3] * sd
    use = use & (sc >= row_thresholds(thr, X))
    return np.abs(truth[use] - est[use]) / (sd[use] * np.exp(lsc[use])), X[use], lsc[use]


def _recalibrate(D, sampling, name, n_chunks, seed, out_root, cal_factor, sim, verbose, t0, retune=False) -> dict:
    """:func:`train_bundle` with ``recalibrate``: new conformal quantiles for an existing bundle
    (``retune``: new score thresholds first, on the tuning set training would use)."""
    import xgboost as xgb

    out = Path(out_root) / name
    manifest = json.loads((out / "manifest.json").read_text())
    boosters = tuple(xgb.Booster(model_file=str(out / manifest[k])) for k in ("reg", "cls", "scale"))
    shrink, thr = np.asarray(manifest["shrink"]), np.asarray(manifest["score_threshold"])
    old_thr = thr
    if retune:
        thr, tuning = _score_thresholds(boosters, shrink, D, sampling, n_chunks, seed, sim)
        manifest["score_threshold"] = thr.round(3).tolist()
        manifest["score_threshold_tuning"] = f"{tuning}; retuned {time.strftime('%Y-%m-%d')}"
    q, scale_edges, n_scores, n_cal = _conformal(boosters, shrink, thr, D, sampling, n_chunks, seed, cal_factor, sim)
    old_q = np.asarray(manifest["conformal"]["q"])
    if old_q.shape != q.shape:   # the groups gained the scale axis: compare each with its group's old quantile
        old_q = np.repeat(old_q, q.shape[0] // old_q.shape[0], axis=0)
    manifest["conformal"].update(
        q=q.round(4).tolist(), scores=n_scores, groups=CONFORMAL_GROUPS, scale_edges=scale_edges,
        calibrated_on=f"kept localizations (score above threshold; no duplicate, imprecise or ambiguous pair): "
                      f"held-out chunks (c % 8 == 7) + {n_cal} fresh chunks; recalibrated "
                      f"{time.strftime('%Y-%m-%d')}, ensembles and thresholds of {manifest['training'].get('seconds')} s "
                      "training kept")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if verbose:
        if retune:
            print(f"[{name}] score thresholds {np.round(old_thr, 2).tolist()} -> {np.round(thr, 2).tolist()}")
        print(f"[{name}] recalibrated on {n_scores} scores in {time.perf_counter() - t0:.0f} s; quantiles moved "
              f"by median {np.median(q / old_q - 1):+.3f} (range {np.min(q / old_q - 1):+.3f}..{np.max(q / old_q - 1):+.3f})")
    return manifest
