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
from .model import COUNT_EDGES, MODEL_DIR, conformal_quantiles, groups
from .psf import DEFAULT_PSF
from .simulate import SNR_LEVELS, SimConfig, simulate_frames

N_ITER = 20
PASSES = 2


def make_dataset(sampling: str, n_chunks: int, frames_per_chunk: int = 50, seed: int = 0,
                 pixel_nm: float = 100.0) -> dict[str, np.ndarray]:
    """Features, targets (residual / CRLB), match labels and chunk ids of simulated candidates."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {k: [] for k in ("X", "t", "label", "chunk", "sd", "fit", "truth", "item",
                                            "n_true", "frame_true", "frame_cand", "frame_chunk",
                                            "frame_mle_tp", "frame_mle_fp")}
    levels = list(SNR_LEVELS.values())
    for c in range(n_chunks):
        N, b = levels[c % len(levels)]
        dens = float(np.exp(rng.uniform(np.log(0.3), np.log(16.0))))
        cfg = SimConfig(n_frames=frames_per_chunk, photons=N, background=b, density=dens,
                        sampling=sampling, structure_every=1, seed=int(rng.integers(1 << 31)))
        frames, truth = simulate_frames(cfg)
        L = localize(frames, pixel_nm=pixel_nm, n_iter=N_ITER, passes=PASSES)
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
        out["X"].append(X), out["t"].append(t), out["label"].append(label)
        out["chunk"].append(np.full(len(L), c)), out["sd"].append(L.sd), out["fit"].append(L.xyz)
        out["truth"].append(tt), out["item"].append(L.item + c * frames_per_chunk)
        out["n_true"].append(np.array([len(T)]))
        out["frame_true"].append(np.bincount(truth["item"], minlength=frames_per_chunk))
        # the one-pass MLE baseline on the same frames: per-frame TP / FP, the JI floor of sparse frames
        B = localize(frames, pixel_nm=pixel_nm, n_iter=N_ITER, passes=1)
        kb = (B.flags & REJECTED) == 0
        be, _ = match(B.item[kb], B.xyz[kb], truth["item"], T)
        tp_b = np.bincount(B.item[kb][be], minlength=frames_per_chunk)
        out["frame_mle_tp"].append(tp_b)
        out["frame_mle_fp"].append(np.bincount(B.item[kb], minlength=frames_per_chunk) - tp_b)
        out["frame_cand"].append(np.bincount(L.item, minlength=frames_per_chunk))
        out["frame_chunk"].append(np.full(frames_per_chunk, c))
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


def train_bundle(sampling: str, name: str, n_chunks: int = 120, seed: int = 0, rounds: int = 60,
                 out_root: Path = MODEL_DIR, verbose: bool = True) -> dict:
    import xgboost as xgb

    t0 = time.perf_counter()
    D = make_dataset(sampling, n_chunks, seed=seed)
    n_true_total = int(D["n_true"].sum())
    cal_chunks = np.arange(n_chunks) % 4 == 3          # every 4th chunk: calibration (all SNRs)
    is_cal = cal_chunks[D["chunk"]]
    lab = D["label"] == 1
    tr = ~is_cal
    if verbose:
        print(f"[{name}] {len(D['X'])} candidates ({lab.sum()} matched) from {n_chunks} chunks "
              f"in {time.perf_counter() - t0:.0f} s")
    params = dict(tree_method="hist", max_depth=6, eta=0.15, subsample=0.8, colsample_bytree=0.8,
                  min_child_weight=20, nthread=2, seed=seed)
    y = np.clip(D["t"][tr & lab], -20, 20)
    reg = xgb.train({**params, "objective": "reg:pseudohubererror", "huber_slope": 2.0,
                     "multi_strategy": "one_output_per_tree"},
                    xgb.DMatrix(D["X"][tr & lab], label=y), num_boost_round=rounds)
    # score = P(a *good* localization): matched, and not one of a merged pair (errors of many CRLBs),
    # so the efficiency-tuned cut can drop the fits that dominate the RMSE
    tt = np.nan_to_num(np.abs(D["t"][:, :3]), nan=np.inf)
    err_nm = tt * D["sd"]
    good = lab & (np.hypot(err_nm[:, 0], err_nm[:, 1]) < 5 * np.hypot(D["sd"][:, 0], D["sd"][:, 1]) + 20) \
        & (err_nm[:, 2] < 5 * D["sd"][:, 2] + 40)
    clf = xgb.train({**params, "max_depth": 5, "objective": "binary:logistic", "eval_metric": "logloss"},
                    xgb.DMatrix(D["X"][tr], label=good[tr].astype(np.float32)), num_boost_round=rounds)
    # typical |error| / CRLB of the fit (log), the conformal normaliser
    ys = np.log(np.abs(D["t"][tr & lab][:, :3]) + 0.1)
    scale = xgb.train({**params, "max_depth": 5, "objective": "reg:squarederror",
                       "multi_strategy": "one_output_per_tree"},
                      xgb.DMatrix(D["X"][tr & lab], label=ys), num_boost_round=max(rounds // 2, 10))
    # calibration on held-out chunks
    Xc = D["X"][is_cal]
    pred = reg.inplace_predict(Xc).reshape(len(Xc), 4)
    score = clf.inplace_predict(Xc)
    ls = scale.inplace_predict(Xc).reshape(len(Xc), 3)
    est = D["fit"][is_cal] + pred[:, :3] * D["sd"][is_cal]
    err = D["truth"][is_cal] - est
    lab_c = lab[is_cal]
    scores = np.abs(err[lab_c]) / (D["sd"][is_cal][lab_c] * np.exp(ls[lab_c]))
    q = conformal_quantiles(scores, groups(Xc[lab_c]))
    err_lat = np.nan_to_num(np.hypot(err[:, 0], err[:, 1]))
    err_ax = np.nan_to_num(err[:, 2])
    # one threshold per frame-crowding bin (isolated emitters tolerate a stricter cut than crowds)
    fbin = np.digitize(D["frame_cand"], COUNT_EDGES)
    fcal = cal_chunks[D["frame_chunk"]]
    cbin = np.digitize(Xc[:, FEATURE_NAMES.index("frame_count")], COUNT_EDGES)
    thr = []
    for k in range(len(COUNT_EDGES) + 1):
        fr = fcal & (fbin == k)
        n_true_k = int(D["frame_true"][fr].sum())
        ji_mle = 100.0 * D["frame_mle_tp"][fr].sum() / max(n_true_k + D["frame_mle_fp"][fr].sum(), 1)
        thr.append(_choose_threshold(score[cbin == k], lab_c[cbin == k].astype(int), err_lat[cbin == k],
                                     err_ax[cbin == k], n_true_k, ji_mle if k == 0 else -np.inf))
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    reg.save_model(str(out / "reg.ubj"))
    clf.save_model(str(out / "cls.ubj"))
    scale.save_model(str(out / "scale.ubj"))
    manifest = {
        "name": name, "modality": "smlm3d", "format_version": 1, "sampling": sampling,
        "feature_names": list(FEATURE_NAMES), "reg": "reg.ubj", "cls": "cls.ubj", "scale": "scale.ubj",
        "reg_targets": ["dx/sd_x", "dy/sd_y", "dz/sd_z", "dlogN/sd_logN"],
        "score_threshold": [round(t, 3) for t in thr],
        "score_threshold_bins": "candidates/frame " + str(list(COUNT_EDGES)),
        "fit_iterations": N_ITER, "passes": PASSES, "psf": DEFAULT_PSF.to_dict(),
        "conformal": {"level": 0.9, "score": "|truth - estimate| / (CRLB(fit) * exp(scale))",
                      "groups": "background [25, 100] x candidates/frame [3, 7] x nearest candidate px [3, 6, 12]",
                      "q": q.round(4).tolist()},
        "training": {"chunks": n_chunks, "frames_per_chunk": 50, "candidates": int(len(D["X"])),
                     "matched": int(lab.sum()), "true_emitters": n_true_total, "rounds": rounds,
                     "snr_levels": list(SNR_LEVELS), "density": "log-uniform 0.3-16 /frame",
                     "seconds": round(time.perf_counter() - t0, 1), "seed": seed},
        "lateral_tol_nm": LATERAL_TOL,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if verbose:
        size = sum(p.stat().st_size for p in out.glob("*.ubj"))
        print(f"[{name}] thresholds {thr}, bundle {size / 1e6:.2f} MB, {time.perf_counter() - t0:.0f} s")
    return manifest
