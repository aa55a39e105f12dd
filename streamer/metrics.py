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


def per_class_table(d_true: np.ndarray, estimates: dict[str, np.ndarray], crb: np.ndarray | None = None) -> list[dict]:
    """Rows of {class, n, <name>_rmse, <name>_bias, ..., crb} (CRB as RMS of per-tuple bounds)."""
    classes = distance_classes(d_true)
    rows = []
    for label in [None, *np.unique(classes)]:
        sel = np.ones(len(d_true), bool) if label is None else classes == label
        row: dict = {"class": "all" if label is None else float(label), "n": int(sel.sum())}
        for name, est in estimates.items():
            err = est[sel] - d_true[sel]
            row[f"{name}_rmse"] = float(np.sqrt(np.mean(err**2)))
            row[f"{name}_bias"] = float(np.mean(err))
        if crb is not None:
            row["crb"] = float(np.sqrt(np.mean(crb[sel] ** 2)))
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of :func:`per_class_table` rows."""
    keys = list(rows[0])
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
