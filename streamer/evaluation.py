"""Accuracy and interval-coverage tables on held-out data (what ``streamer evaluate`` prints)."""

from __future__ import annotations

import numpy as np

from .metrics import distance_classes


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


def markdown_table(rows: list[dict], columns: list[str], headers: list[str] | None = None, digits: int = 2) -> str:
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "-" if not np.isfinite(v) else f"{v:.{digits}f}"
        return str(v)

    headers = headers or columns
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out)
