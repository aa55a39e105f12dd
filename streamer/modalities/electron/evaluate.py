"""The issue's evaluation on held-out library events: accuracy vs the centroid baselines, detection
efficiency / false detections, radius coverage by decile, the knob curve, dense frames, speed."""

from __future__ import annotations

import time

import numpy as np

from ...core.group_conformal import decile_bins
from .detect import BASELINES, SEED_RULE, baseline_xy, detect
from .metrics import double_counts, isolated, knob_curve, knob_ratio_interval, local_occupancy, match
from .model import TreeModel, concat_libraries, library_splits
from .physics import PIXEL_UM, load_library
from .simulate import simulate_frames

KNOB_BLOCK = 100  # frames per resampled block of the knob ratio's bootstrap interval
#: independent libraries (seed, events) whose every event is a test event, added to the base library's
#: 3,000-event test split: frames reuse library events, so with 3,000 distinct tracks each decile of
#: track length held only ~300 of them and its coverage moved by ~0.015 between draws of the split
#: (more frames add noise draws, not tracks)
TEST_EXTRA = ((104, 20000),)


def training_seeds(manifest: dict) -> set[int]:
    """Library seeds a bundle's boosters or calibration saw (base library and every extra one)."""
    t = manifest.get("training", {})
    return {int(t.get("library_seed", 0))} | {int(sd) for k in ("extra_train", "extra_scale", "extra_cal")
                                               for sd, _ in t.get(k, ())}


def refuse_leaks(manifest: dict, extra=TEST_EXTRA) -> None:
    """ValueError if a test library seed of ``extra`` was one the bundle trained or calibrated on."""
    leak = [int(sd) for sd, _ in extra if int(sd) in training_seeds(manifest) | {0}]
    if leak:
        raise ValueError(f"test library seeds {leak} were used in training or calibration")


def held_out_pool(manifest: dict, extra=TEST_EXTRA):
    """(library, test indices): the test split of the bundle's base library plus every event of the
    ``extra`` libraries, all simulated with the bundle's event physics (an instrument profile's
    bundle gets its own sensor's events); refuses an extra library whose seed the bundle trained or
    calibrated on (a leak)."""
    from .physics import EventPhysics

    refuse_leaks(manifest, extra)
    t = manifest.get("training", {})
    phys = EventPhysics(**(t.get("physics") or {}))
    n0, seed0 = int(t.get("library_n", 20000)), int(t.get("library_seed", 0))
    base = load_library(n0, seed0, phys)
    libs = [base] + [load_library(int(n), int(sd), phys) for sd, n in extra]
    idx = [library_splits(len(base), seed0)["test"]]
    start = len(base)
    for lb in libs[1:]:
        idx.append(np.arange(start, start + len(lb)))
        start += len(lb)
    return concat_libraries(libs), np.concatenate(idx)


def _deciles(v: np.ndarray, covered: np.ndarray) -> list[tuple[float, float, float]]:
    b, edges = decile_bins(v)
    return [(float(edges[i]), float(edges[i + 1]), float(covered[b == i].mean())) for i in range(10)]




def run_sparse(model: TreeModel, lib, idx, n_frames: int, seed: int, rate: float = 10.0, size: int = 100,
               camera: dict | None = None, pixel_um: float = PIXEL_UM) -> dict:
    """Everything measured on sparse frames (default 10 e- per 100x100 frame).

    Baselines run twice: on the seed's rule-based detection (the standard pipeline) and on the
    trees' detection (the candidate classifier picks the peak nearest the entry: a hybrid). All
    errors are compared on the same isolated electrons (matched by every detection). ``camera``:
    read noise / gain / offset of the simulated frames (:func:`.simulate.simulate_frames` keywords,
    default the nominal camera); ``pixel_um``: the library's pixel pitch (errors in um)."""
    from .features import features

    fr = simulate_frames(lib, n_frames, size, size, rate=rate, seed=seed, lib_indices=idx, **(camera or {}))
    det = model.detect(fr.frames, fr.adu_per_e, fr.offset)
    rule = detect(fr.frames, SEED_RULE, fr.adu_per_e, fr.offset)
    m = match(det.item, det.col, det.row, fr.truth_item, fr.truth_x, fr.truth_y)
    mr = match(rule.item, rule.col, rule.row, fr.truth_item, fr.truth_x, fr.truth_y)
    iso = isolated(fr.truth_item, fr.truth_x, fr.truth_y)
    ok = m >= 0
    dx, dy, radius, charge = model.predict(det, fr.frames.shape)
    ti = np.nonzero(ok & iso & (mr >= 0))[0]
    di, ri = m[ti], mr[ti]
    tx, ty = fr.truth_x[ti], fr.truth_y[ti]
    err = {"trees": np.hypot(det.col[di] + dx[di] - tx, det.row[di] + dy[di] - ty) * pixel_um}
    for name in BASELINES:
        bx, by = baseline_xy(rule, name)
        err[name] = np.hypot(bx[ri] - tx, by[ri] - ty) * pixel_um
        bx, by = baseline_xy(det, name)
        err[name + "@trees-det"] = np.hypot(bx[di] - tx, by[di] - ty) * pixel_um
    track = fr.truth_track_um[ti]
    hard = track >= np.quantile(track, 0.8)
    covered = err["trees"] <= radius[di] * pixel_um
    # baseline knobs (the centroid has none of its own): cluster size, and 3x3 charge fraction
    names = model.manifest["feature_names"]
    knobs = {}
    for tag, d_, idx_ in (("", rule, ri), ("@trees-det", det, di)):
        X, *_ = features(d_.window[idx_], model.params.threshold_e)
        knobs[tag] = {"size": X[:, names.index("npix_th")],
                      "compact": -X[:, names.index("box3")] / np.maximum(X[:, names.index("q_th")], 1.0)}
    n_iso = len(ti)  # efficiency on the knob curve: kept / isolated electrons found by both detections
    # each method's knob score per isolated event ("method|knob"; the trees' is their radius)
    knob_scores = {"trees": radius[di], **{f"{b}{tag}|{k}": v for b in BASELINES for tag in ("", "@trees-det")
                                           for k, v in knobs[tag].items()}}
    return {
        "frames": n_frames, "true": len(fr.truth_x), "detections": len(det), "matched": int(ok.sum()),
        "efficiency": float(ok.mean()), "efficiency_isolated": float(ok[iso].mean()),
        "false_per_true": float((len(det) - ok.sum()) / len(fr.truth_x)),
        "counted_twice": double_counts(det.item, det.col, det.row, fr.truth_item, fr.truth_x, fr.truth_y, m),
        "rule_efficiency": float((mr >= 0).mean()),
        "rule_false_per_true": float((len(rule) - (mr >= 0).sum()) / len(fr.truth_x)),
        "n_isolated": n_iso, "err": err, "hard": hard, "covered": covered,
        "crb_um": None if fr.truth_crb_px is None else fr.truth_crb_px[ti] * pixel_um,
        "coverage": float(covered.mean()), "coverage_hard": float(covered[hard].mean()),
        "cov_charge": _deciles(fr.truth_charge[ti], covered), "cov_track": _deciles(track, covered),
        "cov_obs_charge": _deciles(charge[di], covered),
        "radius_um_median": float(np.median(radius[di]) * pixel_um),
        "knob": {name: knob_curve(err[name.split("|")[0]], v, n_iso) for name, v in knob_scores.items()},
        # per isolated event, for the knob ratio's bootstrap interval (blocks of KNOB_BLOCK frames)
        "knob_scores": knob_scores, "iso_frame": fr.truth_item[ti],
    }


def run_dense(model: TreeModel, lib, idx, n_frames: int, seed: int, rate: float = 2927.0, size: int = 576) -> dict:
    """576x576 frames at ~2,900 e-: efficiency, false detections and error vs local occupancy."""
    fr = simulate_frames(lib, n_frames, size, size, rate=rate, seed=seed, lib_indices=idx)
    det = model.detect(fr.frames, fr.adu_per_e, fr.offset)
    m = match(det.item, det.col, det.row, fr.truth_item, fr.truth_x, fr.truth_y)
    occ = local_occupancy(fr.truth_item, fr.truth_x, fr.truth_y, 10.0)
    dx, dy, radius, _ = model.predict(det, fr.frames.shape)
    ok = m >= 0
    ti = np.nonzero(ok)[0]
    di = m[ti]
    e_t = np.full(len(m), np.nan)
    e_c = np.full(len(m), np.nan)
    e_t[ti] = np.hypot(det.col[di] + dx[di] - fr.truth_x[ti], det.row[di] + dy[di] - fr.truth_y[ti]) * PIXEL_UM
    bx, by = baseline_xy(det, "centroid3x3_th")
    e_c[ti] = np.hypot(bx[di] - fr.truth_x[ti], by[di] - fr.truth_y[ti]) * PIXEL_UM
    rows = []
    for lo, hi in ((0, 0), (1, 1), (2, 2), (3, 4), (5, 99)):
        s = (occ >= lo) & (occ <= hi)
        if s.sum():
            rows.append((lo, hi, int(s.sum()), float(ok[s].mean()), float(np.nanmean(e_t[s])), float(np.nanmean(e_c[s]))))
    # "no event counted twice": matching is one-to-one, so a second detection of an electron is an
    # unmatched detection with only already-matched entries within the matching radius
    unmatched = np.setdiff1d(np.arange(len(det)), m[ok])
    twice = double_counts(det.item, det.col, det.row, fr.truth_item, fr.truth_x, fr.truth_y, m)
    return {"frames": n_frames, "true": len(fr.truth_x), "detections": len(det), "efficiency": float(ok.mean()),
            "false_per_true": float(len(unmatched) / len(fr.truth_x)), "by_occupancy": rows,
            "mean_occupancy": float(occ.mean()), "counted_twice": twice}


def throughput(model_kind: str, size: int, rate: float, n_frames: int, repeat: int = 3) -> float:
    """Predictor frames/s on one core (the trees predictor's full predict on one packet)."""
    from .predictor import make_predictor
    from .simulate import simulate_frames as sim

    lib = load_library()
    fr = sim(lib, n_frames, size, size, rate=rate, seed=99)
    pred = make_predictor(model_kind)
    from streamer.core.modality import Packet

    pk = Packet("bench", 0, 0.0, "electron", "frames", n_frames,
                {"n": n_frames, "height": size, "width": size, "pixel_um": 5.0, "adu_per_e": 1.0, "offset": fr.offset},
                {"frames": fr.frames})
    pred.predict(pk)
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        pred.predict(pk)
        best = min(best, time.perf_counter() - t)
    return n_frames / best


def _fmt_ratio(a: float, b: float) -> str:
    return f"{a:.3f} / {b:.3f} = {a / b:.3f}"


def _best(err: dict, names, sel=None) -> str:
    return min(names, key=lambda b: err[b][sel].mean() if sel is not None else err[b].mean())


def table(res: dict, dense: dict | None = None, speeds: dict | None = None) -> tuple[str, dict]:
    """Markdown table of the issue's Must-show items; returns (text, pass/fail dict)."""
    err, hard = res["err"], res["hard"]
    seed_names = list(BASELINES)
    hybrid = [b + "@trees-det" for b in BASELINES]
    best, best_h = _best(err, seed_names), _best(err, seed_names, hard)
    bestx, bestx_h = _best(err, hybrid), _best(err, hybrid, hard)
    t_all, t_hard = err["trees"].mean(), err["trees"][hard].mean()
    knob = dict((round(e, 2), v) for e, v, _ in res["knob"]["trees"])
    kb = {k: dict((round(e, 2), v) for e, v, _ in c) for k, c in res["knob"].items() if k != "trees"}
    best_k = min((k for k in kb if "@" not in k), key=lambda k: kb[k][0.8])
    best_kx = min((k for k in kb if "@" in k), key=lambda k: kb[k][0.8])
    knob_ci = None
    if "knob_scores" in res:
        bname = best_k.split("|")[0]
        knob_ci = knob_ratio_interval(err["trees"], res["knob_scores"]["trees"], err[bname],
                                      res["knob_scores"][best_k], res["iso_frame"] // KNOB_BLOCK)
    ok = {
        "mean error <= 0.75x best centroid": t_all <= 0.75 * err[best].mean(),
        "hardest 20% <= 0.6x": t_hard <= 0.6 * err[best_h][hard].mean(),
        "efficiency >= 98%": res["efficiency"] >= 0.98,
        "false detections <= 1%": res["false_per_true"] <= 0.01,
        "knob at 80%: <= 0.6x": knob[0.8] <= 0.6 * kb[best_k][0.8],
        "coverage 88-92% per charge decile": all(0.88 <= c <= 0.92 for *_, c in res["cov_charge"]),
        "coverage 88-92% per track decile": all(0.88 <= c <= 0.92 for *_, c in res["cov_track"]),
    }
    if dense is not None:
        ok["dense frames: no electron counted twice"] = dense["counted_twice"] == 0
    pool = (f"{res['test_events']:,} distinct held-out library events (the base library's 'test' split and "
            f"the independent library seed{'s' if len(res['test_extra']) > 1 else ''} "
            f"{', '.join(map(str, res['test_extra']))})" if res.get("test_extra")
            else "held-out events (library split 'test')")
    lines = [f"Test frames from {pool}, {res['frames']} frames 100x100 at 10 e-/frame, "
             f"{res['true']} electrons; errors in um (pixel 5 um) on the {res['n_isolated']} isolated electrons "
             f"(no other entry within 10 px) found by both detections. Baselines: on the seed's detection "
             f"(brightest 3x3 among maxima within 4 px), and on the trees' detection (`@trees-det`, a hybrid: "
             f"the candidate classifier already picks the peak nearest the entry).", "",
             "| method | mean error, isolated | hardest 20% (longest tracks) | RMS error | RMS, hardest 20% |",
             "|---|---|---|---|---|"]
    rms = lambda v: float(np.sqrt(np.mean(v * v)))  # noqa: E731
    for name in ("trees", *seed_names, *hybrid):
        lines.append(f"| {name} | {err[name].mean():.3f} | {err[name][hard].mean():.3f} | {rms(err[name]):.3f} "
                     f"| {rms(err[name][hard]):.3f} |")
    crb = res.get("crb_um")
    if crb is not None:
        lines.append(f"| floor: read-noise CRB, track shape known (sqrt trace; x0.886 = mean for isotropic errors) "
                     f"| {0.886 * crb.mean():.3f} | {0.886 * crb[hard].mean():.3f} | {rms(crb):.3f} | {rms(crb[hard]):.3f} |")
    lines += ["", f"- trees vs best centroid ({best}): {_fmt_ratio(t_all, err[best].mean())} (target <= 0.75); "
              f"vs best hybrid ({bestx}): {t_all / err[bestx].mean():.3f}",
              f"- hardest 20%, trees vs best centroid there ({best_h}): "
              f"{_fmt_ratio(t_hard, err[best_h][hard].mean())} (target <= 0.6); vs best hybrid ({bestx_h}): "
              f"{t_hard / err[bestx_h][hard].mean():.3f}",
              f"- detection efficiency {res['efficiency']:.4f} (isolated {res['efficiency_isolated']:.4f}), "
              f"false detections {res['false_per_true']:.4f} per true electron (targets >= 0.98, <= 0.01), of them "
              f"electrons counted twice {res['counted_twice']} ({res['counted_twice'] / res['true']:.4f} per electron); "
              f"the seed's rule: {res['rule_efficiency']:.4f}, {res['rule_false_per_true']:.4f}",
              f"- knob at 80% efficiency: trees {knob[0.8]:.3f} um vs best centroid with its best knob ({best_k}) "
              f"{kb[best_k][0.8]:.3f} um: ratio {knob[0.8] / kb[best_k][0.8]:.3f} (target <= 0.6"
              + (f"; 90% interval over blocks of {KNOB_BLOCK} frames {knob_ci[0]:.3f}-{knob_ci[1]:.3f}"
                 if knob_ci else "") + "); without a knob "
              f"(any 80%) {knob[0.8] / err[best].mean():.3f}; vs best hybrid+knob ({best_kx}) "
              f"{knob[0.8] / kb[best_kx][0.8]:.3f}",
              f"- 90% radius coverage {res['coverage']:.3f} overall, {res['coverage_hard']:.3f} on the hardest 20%; "
              f"median radius {res['radius_um_median']:.2f} um", "",
              "| decile | true charge (e-) | coverage | track length (um) | coverage | observed charge (e-) | coverage |",
              "|---|---|---|---|---|---|---|"]
    for i, (a, b, c) in enumerate(zip(res["cov_charge"], res["cov_track"], res["cov_obs_charge"])):
        lines.append(f"| {i + 1} | {a[0]:.0f}-{a[1]:.0f} | {a[2]:.3f} | {b[0]:.1f}-{b[1]:.1f} | {b[2]:.3f} "
                     f"| {c[0]:.0f}-{c[1]:.0f} | {c[2]:.3f} |")
    shown = [best_k, best_kx]
    lines += ["", "Knob curve (mean error of kept isolated events, um; efficiency = kept / isolated electrons):", "",
              "| efficiency | trees (cut on radius) | " + " | ".join(k.replace("|", ", cut on ") for k in shown)
              + " | " + best + " (no knob) |",  # ("|" inside a cell would split the markdown column)
              "|---|---|---|---|---|"]
    for eff in sorted(knob):
        if eff < 0.5 or np.isnan(knob[eff]):
            continue
        lines.append(f"| {eff:.2f} | {knob[eff]:.3f} | " + " | ".join(f"{kb[k][eff]:.3f}" for k in shown)
                     + f" | {err[best].mean():.3f} |")
    if dense:
        lines += ["", f"Dense frames 576x576 at ~2,927 e-: {dense['frames']} frames, {dense['true']} electrons, "
                  f"efficiency {dense['efficiency']:.3f}, unmatched detections {dense['false_per_true']:.4f} per electron, "
                  f"of them electrons counted twice (a second detection with only already-matched electrons "
                  f"within 6 px) {dense['counted_twice']} = {dense['counted_twice'] / dense['true']:.4f} per electron "
                  f"(mean occupancy {dense['mean_occupancy']:.2f} other entries within 10 px)", "",
                  "| other entries within 10 px | electrons | efficiency | trees mean error (um) | centroid3x3_th@trees-det (um) |",
                  "|---|---|---|---|---|"]
        for lo, hi, n, eff, et, ec in dense["by_occupancy"]:
            lines.append(f"| {lo}{'' if lo == hi else '-' + str(hi)} | {n} | {eff:.3f} | {et:.3f} | {ec:.3f} |")
    if speeds:
        lines += ["", "Predictor throughput, one core (frames/s, whole predict incl. detection):", "",
                  "| frames | " + " | ".join(speeds) + " |", "|---|" + "---|" * len(speeds)]
        sizes = sorted({s for v in speeds.values() for s in v})
        for s in sizes:
            lines.append(f"| {s} | " + " | ".join(f"{speeds[k].get(s, float('nan')):,.0f}" for k in speeds) + " |")
    lines += ["", "Pass/fail: " + ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in ok.items())]
    return "\n".join(lines), ok


def evaluate(n_frames: int = 40000, dense_frames: int = 4, seed: int = 7, speed: bool = True, log=print):
    model = TreeModel(kind="compiled")
    lib, idx = held_out_pool(model.manifest)
    res = run_sparse(model, lib, idx, n_frames, seed)
    res["test_events"], res["test_extra"] = len(idx), [int(sd) for sd, _ in TEST_EXTRA]
    dense = run_dense(model, lib, idx, dense_frames, seed + 1) if dense_frames else None
    speeds = None
    if speed:
        speeds = {}
        for kind in ("centroid3x3", "trees", "trees-xgboost"):
            speeds[kind] = {"100x100": throughput(kind, 100, 10.0, 2000),
                            "576x576": throughput(kind, 576, 2927.0, 16)}
    return table(res, dense, speeds)
