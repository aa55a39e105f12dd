"""Accuracy metrics against ground truth, grouped by true distance class."""

from __future__ import annotations

import numpy as np


def distance_classes(d_true: np.ndarray, edges: tuple[float, ...] = (6, 10, 14, 18, 22, 26, 30)) -> np.ndarray:
    """Class label per tuple: the true distance itself when it takes few values (dynamic
    traces, real rulers), otherwise the lower edge of its bin."""
    values = np.unique(d_true)
    if len(values) <= 12:
        return d_true.astype(float)
    idx = np.clip(np.searchsorted(edges, d_true, side="right") - 1, 0, len(edges) - 2)
    return np.asarray(edges, float)[idx]


def per_class_table(d_true: np.ndarray, estimates: dict[str, np.ndarray], crb: np.ndarray | None = None,
                    intervals: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> list[dict]:
    """Rows of {class, n, <name>_rmse, <name>_bias, ..., crb, <interval>_cov, <interval>_width}.

    The CRB column is the RMS of the per-tuple bounds; ``intervals`` maps a name to (lower, upper).
    """
    classes = distance_classes(d_true)
    rows = []
    for label in [None, *np.unique(classes)]:
        sel = np.ones(len(d_true), bool) if label is None else classes == label
        y = d_true[sel]
        row: dict = {"class": "all" if label is None else float(label), "n": int(sel.sum())}
        for name, est in estimates.items():
            err = est[sel] - y
            row[f"{name}_rmse"] = float(np.sqrt(np.mean(err**2)))
            row[f"{name}_bias"] = float(np.mean(err))
        if crb is not None:
            row["crb"] = float(np.sqrt(np.mean(crb[sel] ** 2)))
        for name, (lo, hi) in (intervals or {}).items():
            row[f"{name}_cov"] = float(np.mean((y >= lo[sel]) & (y <= hi[sel])))
            row[f"{name}_width"] = float(np.mean(hi[sel] - lo[sel]))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], columns: list[str] | None = None, headers: list[str] | None = None,
                   digits: int = 2) -> str:
    """Markdown table of dict rows (floats to ``digits`` decimals, non-finite as '-')."""
    columns = columns or list(rows[0])

    def fmt(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "-" if not np.isfinite(v) else f"{v:.{digits}f}"
        return str(v)

    headers = headers or columns
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def block_bootstrap_weights(block: np.ndarray, n_boot: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Resampling whole blocks (frames of one structure, runs of frames): (block index 0..B-1 of each
    item, (n_boot, B) multiplicities of the blocks in each bootstrap sample)."""
    _, inv = np.unique(np.asarray(block), return_inverse=True)
    nb = int(inv.max()) + 1
    return inv, np.random.default_rng(seed).multinomial(nb, np.full(nb, 1.0 / nb), size=n_boot)
