"""Accuracy and interval-coverage tables on held-out data (what ``streamer evaluate`` prints)."""

from __future__ import annotations

import numpy as np

from .metrics import distance_classes, per_class_table


def photon_deciles(photons: np.ndarray) -> np.ndarray:
    """Decile index 0..9 of each tuple's photon count (ties share a decile)."""
    edges = np.quantile(photons, np.linspace(0.1, 0.9, 9))
    return np.searchsorted(edges, photons, side="right")


def coverage_rows(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, groups: np.ndarray, labels=None) -> list[dict]:
    """Coverage and mean width per group value (plus an "all" row first)."""
    inside = (y >= lo) & (y <= hi)
    width = hi - lo
    rows = [{"group": "all", "n": int(len(y)), "coverage": float(inside.mean()), "width_nm": float(width.mean())}]
    for g in np.unique(groups):
        sel = groups == g
        rows.append({"group": labels[g] if labels is not None else g, "n": int(sel.sum()),
                     "coverage": float(inside[sel].mean()), "width_nm": float(width[sel].mean())})
    return rows


def coverage_report(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, photons: np.ndarray) -> dict:
    """Coverage overall, per true-distance class and per photon-count decile."""
    classes = distance_classes(y)
    dec = photon_deciles(photons)
    edges = [int(photons[dec == k].min()) for k in range(10) if np.any(dec == k)]
    dec_labels = {k: f"D{k + 1} (N>={edges[k]})" for k in range(len(edges))}
    by_class = coverage_rows(y, lo, hi, classes)[1:]
    by_decile = coverage_rows(y, lo, hi, dec, dec_labels)[1:]
    inside = (y >= lo) & (y <= hi)
    return {
        "coverage": float(inside.mean()),
        "width_nm": float(np.mean(hi - lo)),
        "by_class": by_class,
        "by_photon_decile": by_decile,
        "min_group_coverage": float(min(r["coverage"] for r in by_class + by_decile)),
    }


# --------------------------------------------------------------------------------------------
# held-out evaluation of a shipped bundle against the physics estimators and the CRB


def predict_in_packets(predict, frames: np.ndarray, packet: int, skip=()) -> dict[str, np.ndarray]:
    """Detection columns of ``frames`` (n, ...) by ``predict(packet_frames, seq) -> (columns, flagged)``,
    ``packet`` frames at a time (benches: the worker's path packet by packet). ``item`` is shifted to
    the frame index in ``frames``; columns in ``skip`` are dropped; ``flagged`` sums the counts."""
    cols: dict[str, list] = {}
    flagged = 0
    for seq, a in enumerate(range(0, len(frames), packet)):
        det, fl = predict(frames[a:a + packet], seq)
        flagged += fl
        for k, v in det.items():
            if k not in skip:
                cols.setdefault(k, []).append(np.asarray(v) + (a if k == "item" else 0))
    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["flagged"] = flagged
    return out


def timed(fn, *args, repeat: int = 1):
    """(result, seconds per call) of the fastest of ``repeat`` calls."""
    import time

    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return out, best


def throughput_us_per_tuple(predictor, batch, batch_size: int = 1000, repeat: int = 5) -> float:
    """Single-thread cost of ``predictor.predict`` per tuple on packets of ``batch_size`` tuples."""
    chunks = [batch[i:i + batch_size] for i in range(0, min(len(batch), 50 * batch_size), batch_size)]

    def run():
        for c in chunks:
            predictor.predict(c)

    _, dt = timed(run, repeat=repeat)
    return dt / sum(len(c) for c in chunks) * 1e6


def accuracy_rows(d_true: np.ndarray, estimates: dict[str, np.ndarray], crb: np.ndarray,
                  intervals: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """Per true-distance class: RMSE and bias of each estimator, RMS CRB, coverage/width of each interval."""
    rows = per_class_table(d_true, estimates, crb, intervals)
    for row in rows:
        if row["class"] != "all":
            row["class"] = f"{row['class']:g}"
    return rows
