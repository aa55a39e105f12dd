"""Trained entry-point model: XGBoost boosters for the canonical (dx, dy) offset of the entry from
the peak pixel, a 90%-quantile booster for the error scale, and a split-conformal factor.

Error radius (per event): ``radius = q * s(X)`` where ``s`` is the quantile booster's output and
``q`` the finite-sample-corrected quantile of ``|error| / s`` on calibration events, computed
separately in cells of observed charge (quintiles) x pixel count (quartiles) x predicted scale
(quartiles) (Mondrian, :data:`TrainConfig.cells`), so that coverage holds across charge and across
easy/hard (long-track) events. Each cell's level (0.85-0.95, mean 0.9) is tuned so that coverage
also holds within deciles of the *true* charge and track length, which the simulation knows
(:mod:`streamer.core.group_conformal`; one level everywhere left the lowest true-charge decile at
86 %). Splits are by library event (train / scale / calibration / test never share an event).

Entry point, routed by the error scale: events with ``s(X) <= scale_max`` (the easy ~90 %: short,
non-back-scattered tracks, the ones the knob keeps) get a second pair of point boosters, ``sdx`` /
``sdy`` (depth 8), fit on those events only and on five times the frames (240,000); the rest keep
``dx`` / ``dy``. Each event still goes through one pair of point boosters. Measured on held-out events
(mean error of the events kept at 80 % efficiency): -0.6 % from the routing alone, -1.4 % with the
larger training set and depth 8, against -0.3 % for the larger set without routing
(``docs/electron/README.md``, "Routing the easy events").

Detection uses a fourth booster, ``keep``: the candidate classifier of :func:`.detect.detect`, and
optionally a fifth, ``merge``: the pair classifier (two kept detections one electron's?).

Bundle: ``compiled_models/electron/trees/manifest.json`` + ``keep.ubj``, ``dx.ubj``, ``dy.ubj``, ``scale.ubj``
(+ ``merge.ubj``, + ``sdx.ubj``, ``sdy.ubj`` and the manifest's ``specialist`` entry).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...core.group_conformal import cell_quantiles, decile_labels, group_levels
from .detect import CANDIDATE_FEATURES, PAIR_FEATURES, DetectParams, Detections, classify, detect, pair_features
from .features import edge_distances, feature_names, features, features_at, from_canonical, to_canonical
from .metrics import isolated, match

BUNDLE_DIR = Path(__file__).resolve().parents[3] / "compiled_models" / "electron" / "trees"
ROLES = ("keep", "dx", "dy", "scale")
#: bundles without a pair classifier (no pair stage) or a specialist (one pair of point boosters) still load
OPTIONAL_ROLES = ("merge", "sdx", "sdy")
TRAIN_CHUNK = 16000  # training frames simulated at once (100x100: ~1.3 GB of float64 buffers)
COVERAGE = 0.9
#: a grouping of the calibration events whose per-decile coverage the cells cannot bring into this band
#: on its own is not tuned for (the issue's 88-92 %)
GROUP_BAND = (0.88, 0.92)


@dataclass
class TrainConfig:
    library_n: int = 20000
    library_seed: int = 0
    keep_frames: int = 24000
    train_frames: int = 48000
    scale_frames: int = 24000  # 4x the frames of 6,000: -0.6 % on the knob (kept mean error at 80 %), same booster size
    cal_frames: int = 6000
    rate: float = 10.0
    size: int = 100
    depth: int = 7
    #: per-coordinate absolute error: the conditional median is what minimises the mean Euclidean
    #: error of the easy events, where a squared loss lets the long back-scattered tails pull it
    point_objective: str = "reg:absoluteerror"
    rounds: int = 100
    eta: float = 0.1  # x 150 / rounds
    keep_depth: int = 7
    keep_rounds: int = 50  # eta 0.1 x 140 / rounds
    scale_depth: int = 4
    scale_rounds: int = 80
    scale_eta: float = 0.1875
    #: a second calibration simulation (conformal step only). 6,000 gave 118k events, and the tuned
    #: levels chased their noise: a track-length decile read 0.888 on them and 0.880 on test frames
    cal_extra_frames: int = 42000
    #: Mondrian cells: (feature, bins); "scale" is the error-scale booster's output
    cells: tuple = (("q_th", 5), ("npix_th", 4), ("scale", 4))
    #: each cell's conformal level moves within these bounds so that coverage holds in every decile of
    #: true charge, true track length and observed charge on the calibration events (() : 0.9 everywhere)
    group_bounds: tuple = (0.85, 0.95)
    max_false: float = 0.008  # keep_p: the lowest cut with at most this many false detections per electron
    #: pair classifier (second counts of one electron among the kept detections): frames it learns from
    merge_frames: int = 12000
    merge_dense_frames: int = 24  # 576x576 at ~2,900 e- (two electrons side by side are the other class)
    merge_depth: int = 4
    merge_rounds: int = 100
    #: easy-event point boosters: events whose error scale is at most this quantile of the training
    #: events' (0: none), trained on ``train_frames + specialist_frames`` frames at ``specialist_depth``
    specialist_quantile: float = 0.9
    specialist_frames: int = 192000
    specialist_depth: int = 8
    nthread: int = 2
    seed: int = 1
    #: independent libraries (seed, events) added to each fitting role's pool of library events. The
    #: evaluation's test events are the ``test`` split of the ``library_seed`` library and independent
    #: test libraries whose seeds must not appear here (:func:`.evaluate.held_out_pool` refuses them), so
    #: extra libraries never leak into it; they only add distinct events (the 55 % train split alone
    #: is 11,000 events, each seen ~14 times under new noise).
    extra_train: tuple = ((101, 40000),)
    extra_scale: tuple = ()
    #: 43,000 distinct calibration tracks instead of the split's 3,000 (the 472k calibration events
    #: drew each of those ~160 times)
    extra_cal: tuple = ((103, 40000),)
    #: the instrument simulated (issue 14): EventPhysics keywords (None: the nominal sensor and beam)
    #: and the camera's read noise / gain / offset (:func:`.simulate.simulate_frames`)
    physics: dict | None = None
    noise_e: float = 20.0
    adu_per_e: float = 1.0
    offset: float = 100.0

    def event_physics(self):
        from .physics import EventPhysics

        return EventPhysics(**(self.physics or {}))

    def detect_params(self) -> DetectParams:
        """Detection thresholds: the nominal ones (2 sigma of 20 e- read noise, ...), scaled up with
        a noisier camera so that the candidate count per frame stays what the classifier was built for."""
        k = max(1.0, self.noise_e / 20.0)
        if k == 1.0:
            return DetectParams()
        d = DetectParams()
        return DetectParams(threshold_e=d.threshold_e * k, seed_e=d.seed_e * k, box_e=d.box_e * k,
                            orphan_box=d.orphan_box * k)


def library_splits(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint library-event index sets: train 55%, scale 15%, cal 15%, test 15%."""
    perm = np.random.default_rng(seed + 12345).permutation(n)
    a, b, c = int(0.55 * n), int(0.70 * n), int(0.85 * n)
    return {"train": perm[:a], "scale": perm[a:b], "cal": perm[b:c], "test": perm[c:]}


def concat_libraries(libs):
    """One library holding the events of ``libs`` in order (indices of the first are unchanged)."""
    from .physics import EventLibrary

    if len(libs) == 1:
        return libs[0]
    cat = lambda f: np.concatenate([getattr(lb, f) for lb in libs])  # noqa: E731
    crb = None if any(lb.crb_px is None for lb in libs) else cat("crb_px")
    return EventLibrary(cat("stamps"), cat("sub"), cat("charge"), cat("track_um"), cat("backscatter"),
                        libs[0].physics, crb)


def training_pool(cfg: "TrainConfig"):
    """(library, role -> library indices): the ``library_seed`` library's splits, each fitting role's
    split extended by the events of its extra libraries (``cfg.extra_*``), appended after it."""
    from .physics import load_library

    phys = cfg.event_physics()
    base = load_library(cfg.library_n, cfg.library_seed, phys)
    splits = library_splits(len(base), cfg.library_seed)
    seeds = [int(sd) for extra in (cfg.extra_train, cfg.extra_scale, cfg.extra_cal) for sd, _ in extra]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"extra library seeds must differ between roles: {seeds}")
    libs, start = [base], len(base)
    for role, extra in (("train", cfg.extra_train), ("scale", cfg.extra_scale), ("cal", cfg.extra_cal)):
        for seed, n in extra:
            if int(seed) == cfg.library_seed:
                raise ValueError(f"extra library seed {seed} is the base library's (its test split would leak)")
            lb = load_library(int(n), int(seed), phys)
            libs.append(lb)
            splits[role] = np.concatenate([splits[role], np.arange(start, start + len(lb))])
            start += len(lb)
    return concat_libraries(libs), splits


def labelled(frames, det: Detections, params: DetectParams):
    """Features and canonical targets of the detections matched to a true entry."""
    m = match(det.item, det.col, det.row, frames.truth_item, frames.truth_x, frames.truth_y)
    ti = np.nonzero(m >= 0)[0]
    di = m[ti]
    h, w = frames.frames.shape[1:]
    X, fx, fy, tr = features(det.window[di], params.threshold_e,
                             edge_distances(det.row[di], det.col[di], h, w, params.window_r))
    cx, cy = to_canonical(frames.truth_x[ti] - det.col[di], frames.truth_y[ti] - det.row[di], fx, fy, tr)
    return X, cx.astype(np.float32), cy.astype(np.float32), ti, di


def _iso_deciles(v: np.ndarray, iso: np.ndarray) -> np.ndarray:
    """Decile label (0-9) of ``v`` among the isolated events, 10 for every other event: the levels are
    tuned to the deciles the evaluation reports (isolated electrons: no other entry within 10 px),
    and the electrons with a neighbour, as one more group, keep their 90 % too."""
    lab = np.full(len(v), 10, np.int64)
    lab[iso] = decile_labels(v[iso])
    return lab


def _frames(lib, cfg: TrainConfig, idx, n_frames: int, seed: int, size: int | None = None,
            rate: float | None = None):
    """Frames of the configured camera (``size``/``rate``: other than the training frames')."""
    from .simulate import simulate_frames

    size = size or cfg.size
    return simulate_frames(lib, n_frames, size, size, rate=rate or cfg.rate, seed=seed, lib_indices=idx,
                           noise_e=cfg.noise_e, adu_per_e=cfg.adu_per_e, offset=cfg.offset)


def candidate_set(fr, params: DetectParams):
    """Candidate-classifier features and labels (1 = the candidate matched to a true entry)."""
    from .detect import _gather, candidate_features, candidates

    item, row, col, box, peak = candidates(fr.frames, params, fr.adu_per_e, fr.offset)
    win = _gather(fr.frames, item, row, col, params.window_r, fr.adu_per_e, fr.offset)
    X = candidate_features(fr.frames, item, row, col, box, peak, win, params, fr.adu_per_e, fr.offset)
    m = match(item, col, row, fr.truth_item, fr.truth_x, fr.truth_y)
    y = np.zeros(len(item), np.float32)
    y[m[m >= 0]] = 1.0
    return X, y


def pair_set(fr, params: DetectParams, keep):
    """Pair-classifier features and labels: pairs of detections kept by the candidate classifier
    (:func:`.detect.pair_features`); 1 = exactly one of the two matched to a true entry (a second
    count of an electron, or a count of nothing next to one), 0 = both matched (two electrons)."""
    c = classify(fr.frames, params, fr.adu_per_e, fr.offset, keep)
    ki = np.flatnonzero(c.keep)
    a, b, X = pair_features(fr.frames, c.item[ki], c.row[ki], c.col[ki], c.peak[ki], c.prob[ki], c.X[ki],
                            params.window_r, params.merge_below, fr.adu_per_e, fr.offset)
    m = match(c.item[ki], c.col[ki], c.row[ki], fr.truth_item, fr.truth_x, fr.truth_y)
    matched = np.zeros(len(ki), bool)
    matched[m[m >= 0]] = True
    use = matched[a] | matched[b]
    return X[use], (matched[a] ^ matched[b])[use].astype(np.float32)


def _fit_merge(xgb, cfg: "TrainConfig", lib, splits, params: DetectParams, keep, log, t0):
    """The pair classifier, on sparse and dense frames of the training split."""
    parts = [pair_set(_frames(lib, cfg, splits["train"], cfg.merge_frames, cfg.seed + 30), params, keep)]
    if cfg.merge_dense_frames:
        dense = _frames(lib, cfg, splits["train"], cfg.merge_dense_frames, cfg.seed + 31, size=576, rate=2927.0)
        parts.append(pair_set(dense, params, keep))
    X, y = (np.concatenate(c) for c in zip(*parts))
    pm = dict(objective="binary:logistic", max_depth=cfg.merge_depth, eta=0.1, subsample=0.8, nthread=cfg.nthread,
              tree_method="hist", seed=cfg.seed)
    bm = xgb.train(pm, xgb.DMatrix(X, y), cfg.merge_rounds)
    log(f"pair classifier: {len(y)} pairs, {int(y.sum())} second counts ({time.time() - t0:.0f} s)")
    return margin_booster(bm)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Probability (float32) from a classifier's margin."""
    return (1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))).astype(np.float32)


def _sigmoid_of(booster):
    """Probability from a margin booster (XGBoost, training time)."""
    return lambda X: _sigmoid(booster.inplace_predict(X))


def _sweep_cuts(fr, params: DetectParams, keep, merge, max_false: float):
    """Detection cuts on calibration frames: ``keep_p`` = the lowest candidate-classifier cut with at
    most ``max_false`` false detections per electron (its efficiency = the reference); with a pair
    classifier, ``merge_p`` and a new ``keep_p`` = the pair with the fewest false detections among
    those at least as efficient as the reference (the pair stage is spent on fewer second counts,
    not on efficiency). Returns (params, sweep rows (keep_p, merge_p, efficiency, false))."""
    def run(keep_p, merge_p):
        pc = DetectParams(**{**asdict(params), "keep_p": float(keep_p), "merge_p": float(merge_p)})
        d = detect(fr.frames, pc, fr.adu_per_e, fr.offset, keep_model=keep, merge_model=merge)
        mm = match(d.item, d.col, d.row, fr.truth_item, fr.truth_x, fr.truth_y)
        return (float(keep_p), float(merge_p), float((mm >= 0).mean()), float((len(d) - (mm >= 0).sum()) / len(mm)))

    sweep = [run(cut, 2.0) for cut in np.round(np.arange(0.30, 0.801, 0.01), 2)]
    ok = [c for c in sweep if c[3] <= max_false] or [sweep[-1]]
    ref = ok[0]
    best = ref
    if merge is not None:
        for mp in np.round(np.arange(0.3, 0.91, 0.1), 1):
            for cut in np.round(np.arange(0.30, 0.801, 0.02), 2):
                row = run(cut, mp)
                sweep.append(row)
                if row[2] >= ref[2] and (row[3], -row[2]) < (best[3], -best[2]):
                    best = row
    return DetectParams(**{**asdict(params), "keep_p": best[0], "merge_p": best[1]}), sweep


def margin_booster(booster):
    """The same ``binary:logistic`` booster re-declared ``binary:logitraw`` (raw margin out, base
    score moved to the margin scale): a plain additive model, which the compiled ``array`` layout
    runs branch-free (~3x faster than the branchy fallback it needs for a sigmoid output)."""
    import xgboost as xgb

    raw = json.loads(booster.save_raw("json"))
    learner = raw["learner"]
    if learner["objective"]["name"] == "binary:logitraw":
        return booster
    if learner["objective"]["name"] != "binary:logistic":
        raise ValueError(f"expected a binary:logistic booster, got {learner['objective']['name']}")
    p0 = float(str(learner["learner_model_param"]["base_score"]).strip("[]"))
    learner["objective"] = {"name": "binary:logitraw",
                            "reg_loss_param": learner["objective"].get("reg_loss_param", {"scale_pos_weight": "1"})}
    learner["learner_model_param"]["base_score"] = "[%.9E]" % np.log(p0 / (1.0 - p0))
    out = xgb.Booster()
    out.load_model(bytearray(json.dumps(raw).encode()))
    return out


def cell_index(X: np.ndarray, s: np.ndarray, names: list[str], axes) -> np.ndarray:
    """Mondrian cell of each event: ``axes`` = [(feature, edges)], feature "scale" = ``s``."""
    cell = np.zeros(len(X), np.int64)
    for feat, edges in axes:
        v = s if feat == "scale" else X[:, names.index(feat)]
        cell = cell * (len(edges) - 1) + charge_bin(v, np.asarray(edges, float))
    return cell


def _edges(v: np.ndarray, k: int) -> np.ndarray:
    e = np.quantile(v, np.linspace(0, 1, k + 1))
    e[0], e[-1] = -np.inf, np.inf
    return e


def charge_bin(q: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, q, side="right") - 1, 0, len(edges) - 2)


def _fit_scale(xgb, cfg: TrainConfig, sim_det, splits, params, bx, by):
    """Error-scale booster (90% quantile of |error|) on events the point boosters never saw."""
    fr, det = sim_det(splits["scale"], cfg.scale_frames, cfg.seed + 1)
    Xs, sx, sy, *_ = labelled(fr, det, params)
    rs = np.hypot(bx.inplace_predict(Xs) - sx, by.inplace_predict(Xs) - sy)
    ps = dict(objective="reg:quantileerror", quantile_alpha=COVERAGE, max_depth=cfg.scale_depth, eta=cfg.scale_eta,
              subsample=0.8, min_child_weight=20, nthread=cfg.nthread, tree_method="hist", seed=cfg.seed)
    return xgb.train(ps, xgb.DMatrix(Xs, rs), cfg.scale_rounds), len(Xs)


def routed_point(X: np.ndarray, s: np.ndarray, general, special=None, scale_max: float | None = None):
    """Canonical (dx, dy) of events ``X`` with error scales ``s``: ``special`` = (dx, dy) predict
    functions for the events with ``s <= scale_max``, ``general`` for the rest (and for all of them
    without a specialist). Each event goes through one pair."""
    if special is None or scale_max is None:
        return (np.asarray(general[0](X), np.float32), np.asarray(general[1](X), np.float32))
    easy = s <= np.float32(scale_max)
    cx, cy = np.empty(len(X), np.float32), np.empty(len(X), np.float32)
    for rows, (fx, fy) in ((easy, special), (~easy, general)):
        if rows.any():
            Xr = X[rows]
            cx[rows], cy[rows] = fx(Xr), fy(Xr)
    return cx, cy


def _point_params(cfg: TrainConfig, depth: int) -> dict:
    """XGBoost parameters of the entry-point boosters (general or easy-event) of tree ``depth``."""
    return dict(objective=cfg.point_objective, max_depth=depth, eta=cfg.eta * 150 / cfg.rounds, subsample=0.8,
                colsample_bytree=0.8, min_child_weight=5, nthread=cfg.nthread, tree_method="hist", seed=cfg.seed)


def _chunk_sizes(n_frames: int) -> list[int]:
    """Frames per simulated training chunk (TRAIN_CHUNK each, the last one the rest)."""
    return [min(TRAIN_CHUNK, n_frames - a) for a in range(0, n_frames, TRAIN_CHUNK)]


def _train_chunk(cfg: TrainConfig, sim_det, splits, params, k: int, n_frames: int):
    """(X, cx, cy) of training chunk ``k`` (``n_frames`` frames of the training split, seed per chunk):
    one float64 image buffer per chunk, not per training set."""
    fr, det = sim_det(splits["train"], n_frames, cfg.seed + 1000 * k)
    return labelled(fr, det, params)[:3]


def _fit_specialist(xgb, cfg: TrainConfig, sim_det, splits, params, bs, log, t0, have=()):
    """Point boosters for the easy events: the training frames plus ``specialist_frames`` more,
    routed by the error-scale booster; ``scale_max`` = the ``specialist_quantile`` of the first
    chunk's scales. ``have``: chunks already simulated for the general boosters (same seeds; reused
    where the chunk has the same frame count). Returns (sdx, sdy, scale_max, events)."""
    parts, scale_max = [], None
    for k, n in enumerate(_chunk_sizes(cfg.train_frames + cfg.specialist_frames)):
        reuse = k < len(have) and _chunk_sizes(cfg.train_frames)[k] == n
        X, cx, cy = have[k] if reuse else _train_chunk(cfg, sim_det, splits, params, k, n)
        s = np.maximum(bs.inplace_predict(X), 1e-3)
        if scale_max is None:
            scale_max = float(np.quantile(s, cfg.specialist_quantile))
        easy = s <= np.float32(scale_max)
        parts.append((X[easy], cx[easy], cy[easy]))
    X, cx, cy = (np.concatenate(c) for c in zip(*parts))
    del parts
    log(f"specialist: {len(X)} easy events (scale <= {scale_max:.3f} px) from "
        f"{cfg.train_frames + cfg.specialist_frames} frames ({time.time() - t0:.0f} s)")
    p = _point_params(cfg, cfg.specialist_depth)
    sdx = xgb.train(p, xgb.QuantileDMatrix(X, cx), cfg.rounds)
    sdy = xgb.train(p, xgb.QuantileDMatrix(X, cy), cfg.rounds)
    return sdx, sdy, scale_max, len(X)


def train(cfg: TrainConfig = TrainConfig(), out_dir: Path = BUNDLE_DIR, log=print,
          recalibrate: bool = False, refit_scale: bool = False, refit_point: bool = False,
          refit_specialist: bool = False, instrument: dict | None = None) -> dict:
    """Simulate, fit, calibrate and write the bundle; returns the manifest (``instrument``: the
    manifest's instrument entry, see :func:`.instrument.coverage`). With ``recalibrate``
    the boosters already in ``out_dir`` are kept and only the cut and conformal step are redone
    (``refit_scale``: the error-scale booster is refit too; ``refit_point``: the entry-point and
    scale boosters are refit, only the candidate classifier is kept; ``refit_specialist``: the
    easy-event point boosters are (re)fit; they are refit whenever the scale booster is, which routes
    to them)."""
    import xgboost as xgb

    t0 = time.time()
    lib, splits = training_pool(cfg)
    params = cfg.detect_params()
    # 1. candidate classifier: an electron's own peak vs a secondary maximum of its track / noise
    old = {}
    if recalibrate:
        prev = json.loads((Path(out_dir) / "manifest.json").read_text())
        old = {r: xgb.Booster(model_file=str(Path(out_dir) / f"{r}.ubj"))
               for r in ROLES + OPTIONAL_ROLES if r in prev.get("boosters", {r: r for r in ROLES})}
    if "keep" in old:
        bk = old["keep"]
    else:
        Xk, yk = candidate_set(_frames(lib, cfg, splits["train"], cfg.keep_frames, cfg.seed + 10), params)
        pk = dict(objective="binary:logistic", max_depth=cfg.keep_depth, eta=0.1 * 140 / cfg.keep_rounds, subsample=0.8,
                  nthread=cfg.nthread, tree_method="hist", seed=cfg.seed)
        bk = xgb.train(pk, xgb.DMatrix(Xk, yk), cfg.keep_rounds)
        log(f"candidate classifier: {len(yk)} candidates ({time.time() - t0:.0f} s)")
    bk = margin_booster(bk)

    keep = _sigmoid_of(bk)
    # 1b. pair classifier: two kept detections one electron's (a second count of a bright track)?
    bm = old["merge"] if "merge" in old else (_fit_merge(xgb, cfg, lib, splits, params, keep, log, t0)
                                               if cfg.merge_rounds else None)
    merge = None if bm is None else _sigmoid_of(bm)

    def sim_det(idx, n, seed):
        fr = _frames(lib, cfg, idx, n, seed)
        return fr, detect(fr.frames, params, fr.adu_per_e, fr.offset, keep_model=keep)

    # 2. entry-point offset boosters on the detections the classifier keeps
    chunks = ()  # the training chunks simulated here, kept for the easy-event boosters (same chunks and more)
    if old and not refit_point:
        bx, by, bs = old["dx"], old["dy"], old["scale"]
        n_train, n_scale, charge_range = prev["training"]["n_train"], prev["training"]["n_scale"], prev["charge_range"]
        if refit_scale:
            bs, n_scale = _fit_scale(xgb, cfg, sim_det, splits, params, bx, by)
    else:
        chunks = [_train_chunk(cfg, sim_det, splits, params, k, n)
                  for k, n in enumerate(_chunk_sizes(cfg.train_frames))]
        X, cx, cy = (np.concatenate(c) for c in zip(*chunks))
        log(f"train: {len(X)} events from {cfg.train_frames} frames ({time.time() - t0:.0f} s)")
        p = _point_params(cfg, cfg.depth)
        bx = xgb.train(p, xgb.DMatrix(X, cx), cfg.rounds)
        by = xgb.train(p, xgb.DMatrix(X, cy), cfg.rounds)
        log(f"point boosters done ({time.time() - t0:.0f} s)")
        bs, n_scale = _fit_scale(xgb, cfg, sim_det, splits, params, bx, by)
        n_train = len(X)
        qcol = feature_names(params.window_r).index("q_th")
        charge_range = [float(np.quantile(X[:, qcol], 0.001)), float(np.quantile(X[:, qcol], 0.999))]
        del X, cx, cy
    # 3. easy-event point boosters, routed by the scale booster
    spec = None
    if old and not (refit_point or refit_scale or refit_specialist):
        if "sdx" in old:
            spec = (old["sdx"], old["sdy"], prev["specialist"]["scale_max"], prev["specialist"]["n_train"])
    elif cfg.specialist_quantile > 0:
        spec = _fit_specialist(xgb, cfg, sim_det, splits, params, bs, log, t0, chunks)
    del chunks
    # 4. detection cuts on the calibration split: highest efficiency with <= max_false false detections,
    #    then the pair stage's cut (and a new keep_p) for the fewest false detections at that efficiency
    fr = _frames(lib, cfg, splits["cal"], cfg.cal_frames, cfg.seed + 2)
    params, sweep = _sweep_cuts(fr, params, keep, merge, cfg.max_false)
    chosen = next(c for c in sweep if (c[0], c[1]) == (params.keep_p, params.merge_p))
    log(f"keep_p = {params.keep_p}, merge_p = {params.merge_p} (efficiency {chosen[2]:.4f}, false {chosen[3]:.4f} "
        "on calibration frames)")
    # 5. conformal calibration, Mondrian by (pixel count x charge near the peak x predicted scale),
    #    on the calibration frames plus a second calibration simulation (more events per cell)
    def cal_events(f):
        X_, cx_, cy_, ti, _ = labelled(f, detect(f.frames, params, f.adu_per_e, f.offset, keep_model=keep,
                                                  merge_model=merge), params)
        return (X_, cx_, cy_, f.truth_charge[ti], f.truth_track_um[ti],
                isolated(f.truth_item, f.truth_x, f.truth_y)[ti])

    parts = [cal_events(fr)]
    if cfg.cal_extra_frames:
        parts.append(cal_events(_frames(lib, cfg, splits["cal"], cfg.cal_extra_frames, cfg.seed + 22)))
    Xc, ccx, ccy, true_q, true_track, iso = (np.concatenate(c) for c in zip(*parts))
    del parts
    sc = np.maximum(bs.inplace_predict(Xc), 1e-3)
    pcx, pcy = routed_point(Xc, sc, (bx.inplace_predict, by.inplace_predict),
                            None if spec is None else (spec[0].inplace_predict, spec[1].inplace_predict),
                            None if spec is None else spec[2])
    rc = np.hypot(pcx - ccx, pcy - ccy)
    names = feature_names(params.window_r)
    axes = [(f, _edges(sc if f == "scale" else Xc[:, names.index(f)], k).tolist()) for f, k in cfg.cells]
    cell = cell_index(Xc, sc, names, axes)
    n_cells = int(np.prod([k for _, k in cfg.cells]))
    levels, group_cov, group_used = np.full(n_cells, COVERAGE), None, []
    if cfg.group_bounds:
        # per-cell levels for 90 % within deciles of true charge and true track length (known in
        # simulation only) and of observed charge (:mod:`streamer.core.group_conformal`)
        levels, group_cov, group_used = group_levels(
            rc / sc, cell, n_cells, [_iso_deciles(v, iso) for v in (true_q, true_track, Xc[:, names.index("q_th")])],
            COVERAGE, tuple(cfg.group_bounds), band=GROUP_BAND)
        log("calibration groups (true charge / true track / observed charge deciles): coverage "
            + " / ".join(f"{c.min():.3f}-{c.max():.3f}{'' if u else ' (out of reach, not tuned)'}"
                         for c, u in zip(group_cov, group_used)))
    qs = cell_quantiles(rc / sc, cell, n_cells, levels).tolist()
    log(f"calibration: {len(Xc)} events, q per cell {np.round(qs, 3).tolist()} ({time.time() - t0:.0f} s)")
    calibration = {"coverage": COVERAGE, "cells": axes, "q": qs, "levels": np.round(levels, 4).tolist(),
                   "group_bounds": list(cfg.group_bounds or ()),
                   "groups": [f"{g} deciles of isolated events, + 1 group of the others"
                              for g in ("true charge", "true track-length", "observed charge")]
                   if group_cov is not None else [],
                   "group_coverage": [np.round(c, 4).tolist() for c in group_cov or []],
                   "groups_tuned": group_used}
    manifest = {
        "modality": "electron", "model": "trees", "feature_names": feature_names(params.window_r),
        "candidate_feature_names": CANDIDATE_FEATURES, "pair_feature_names": PAIR_FEATURES,
        "detect": asdict(params), "calibration": calibration,
        "keep_sweep": sweep, "keep_sweep_columns": ["keep_p", "merge_p", "efficiency", "false_per_electron"],
        "keep_output": "margin",
        "training": {**asdict(cfg), "n_train": int(n_train), "n_scale": int(n_scale), "n_cal": int(len(Xc)),
                     "seconds": round(time.time() - t0, 1)},
        "charge_range": charge_range,
        "physics": lib.physics,
    }
    if instrument:  # trained for an instrument profile (issue 14): its hash and what the bundle covers
        manifest["instrument"] = instrument
    boosters = {"keep": bk, "dx": bx, "dy": by, "scale": bs}
    if bm is not None:
        boosters["merge"] = bm
    if spec is not None:
        boosters.update(sdx=spec[0], sdy=spec[1])
        manifest["specialist"] = {"scale_max": float(spec[2]), "quantile": cfg.specialist_quantile,
                                  "n_train": int(spec[3])}
    return save_bundle(out_dir, manifest, boosters)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_bundle(out_dir: Path, manifest: dict, boosters: dict) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, b in boosters.items():
        b.save_model(str(out_dir / f"{role}.ubj"))
        files[role] = f"{role}.ubj"
    manifest = {**manifest, "boosters": files, "sha256": {f: _sha(out_dir / f) for f in files.values()}}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_bundle(directory: Path = BUNDLE_DIR) -> dict:
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no electron model at {directory}; run `streamer train --modality electron`")
    manifest = json.loads(path.read_text())
    for name, digest in manifest["sha256"].items():
        if _sha(directory / name) != digest:
            raise ValueError(f"{directory / name}: sha256 does not match the manifest")
    manifest["_dir"] = str(directory)
    return manifest


class TreeModel:
    """Loaded bundle: features -> frame offsets (dx, dy) and 90% radius (pixels)."""

    def __init__(self, directory: Path = BUNDLE_DIR, kind: str = "compiled", nthread: int = 1) -> None:
        from streamer.core.backends import load_backend

        self.manifest = load_bundle(directory)
        d = Path(self.manifest["_dir"])
        self.backends = {r: load_backend(d / self.manifest["boosters"][r], kind=kind, nthread=nthread)
                         for r in ROLES + OPTIONAL_ROLES if r in self.manifest["boosters"]}
        cal = self.manifest["calibration"]
        self.axes = [(f, np.asarray(e, float)) for f, e in cal["cells"]]
        self.q = np.asarray(cal["q"], np.float32)
        self.names = self.manifest["feature_names"]
        self.qcol = self.names.index("q_th")
        self.ncol = self.names.index("npix_th")
        self.params = DetectParams(**self.manifest["detect"])
        self.keep_margin = self.manifest.get("keep_output", "probability") == "margin"
        spec = self.manifest.get("specialist")
        self.scale_max = None if spec is None else float(spec["scale_max"])
        self.model_id = f"electron-trees-{self.manifest['sha256']['dx.ubj'][:12]}"

    def keep(self, X: np.ndarray) -> np.ndarray:
        """Candidate-classifier probability (detection step); the booster outputs its margin."""
        z = self.backends["keep"].predict(X)
        return _sigmoid(z) if self.keep_margin else z

    def merge(self, X: np.ndarray) -> np.ndarray:
        """Pair-classifier probability that two kept detections are one electron's (margin booster)."""
        return _sigmoid(self.backends["merge"].predict(X))

    def detect(self, frames: np.ndarray, adu_per_e: float = 1.0, offset: float = 0.0,
               windows: bool = True) -> Detections:
        return detect(frames, self.params, adu_per_e, offset, keep_model=self.keep,
                      merge_model=self.merge if "merge" in self.backends else None, windows=windows)

    def predict(self, det: Detections, shape):
        """(dx, dy, radius, charge) of detections in frames of ``shape`` (n, H, W)."""
        r = self.predict_all(det, shape)
        return r["dx"], r["dy"], r["radius"], r["charge"]

    def predict_all(self, det: Detections, shape, frames: np.ndarray | None = None, adu_per_e: float = 1.0,
                    offset: float = 0.0) -> dict[str, np.ndarray]:
        """dx, dy, radius, score, charge, size of detections in frames of ``shape`` (n, H, W); detections
        without windows (``detect(windows=False)``) read their features from the raw ``frames``."""
        edges = edge_distances(det.row, det.col, shape[1], shape[2], self.params.window_r)
        if det.window is None:
            if frames is None:
                raise ValueError("detections without windows need the frames they came from")
            return self._predict_features(*features_at(frames, det.item, det.row, det.col, self.params.window_r,
                                                       adu_per_e, offset, self.params.threshold_e, edges))
        return self.predict_windows_all(det.window, edges)

    def predict_windows(self, win: np.ndarray, edges: np.ndarray | None = None):
        """(dx, dy, radius, charge) for electron windows (m, 2R+1, 2R+1)."""
        r = self.predict_windows_all(win, edges)
        return r["dx"], r["dy"], r["radius"], r["charge"]

    def predict_windows_all(self, win: np.ndarray, edges: np.ndarray | None = None) -> dict[str, np.ndarray]:
        return self._predict_features(*features(win, self.params.threshold_e, edges))

    def _predict_features(self, X, fx, fy, tr) -> dict[str, np.ndarray]:
        if len(X) == 0:
            z = np.zeros(0, np.float32)
            return {"dx": z, "dy": z, "radius": z, "score": z, "charge": z, "size": np.zeros(0, np.int32)}
        b = self.backends
        s = np.maximum(b["scale"].predict(X), 1e-3)
        cx, cy = routed_point(X, s, (b["dx"].predict, b["dy"].predict),
                              (b["sdx"].predict, b["sdy"].predict) if "sdx" in b else None, self.scale_max)
        charge = X[:, self.qcol]
        radius = (s * self.q[cell_index(X, s, self.names, self.axes)]).astype(np.float32)
        dx, dy = from_canonical(cx, cy, fx, fy, tr)
        return {"dx": dx.astype(np.float32), "dy": dy.astype(np.float32), "radius": radius, "score": radius,
                "charge": charge, "size": X[:, self.ncol].astype(np.int32)}
