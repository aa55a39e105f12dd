"""Mondrian split-conformal 90% intervals for log D, adapting to photons and to D.

Score: |log D_true - log D_hat| / s(x), with s(x) a scale model (a small booster predicting the
absolute residual from the features, fitted on calibration stacks *not* used below; s = 1 without
it). The remaining calibration stacks are split into groups by the *measured* photons per frame
and the *predicted* D (both known at prediction time), each group gets its own finite-sample
conformal quantile q_g = the ceil((n_g + 1)(1 - alpha))-th smallest score, and the interval is
[D_hat e^(-q_g s), D_hat e^(+q_g s)]. Within each group coverage is >= 1 - alpha for exchangeable
stacks (Vovk's Mondrian conformal prediction); small groups fall back to the whole-set quantile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """Finite-sample split-conformal quantile (inf when there are too few scores)."""
    s = np.sort(np.asarray(scores, float))
    k = int(np.ceil((len(s) + 1) * (1 - alpha)))
    return float(s[k - 1]) if 1 <= k <= len(s) else float("inf")


@dataclass
class Mondrian:
    log_d_edges: list[float]  # inner edges on predicted log D
    log_p_edges: list[float]  # inner edges on measured log photons
    q: list[list[float]]  # [d bin][photon bin] quantile of |log residual|
    alpha: float
    counts: list[list[int]]

    def group(self, log_d_hat: np.ndarray, photons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.searchsorted(np.asarray(self.log_d_edges), log_d_hat)
        j = np.searchsorted(np.asarray(self.log_p_edges), np.log(np.maximum(photons, 1e-3)))
        return i, j

    def half_width(self, log_d_hat: np.ndarray, photons: np.ndarray, scale: np.ndarray | float = 1.0) -> np.ndarray:
        i, j = self.group(log_d_hat, photons)
        return np.asarray(self.q, float)[i, j] * scale

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Mondrian":
        return cls(**d)


def fit_mondrian(log_d_hat: np.ndarray, log_d_true: np.ndarray, photons: np.ndarray, alpha: float = 0.1,
                 n_d: int = 5, n_p: int = 4, min_group: int = 100, scale: np.ndarray | float = 1.0) -> Mondrian:
    """Groups at quantiles of predicted log D and measured log photons of the calibration set."""
    lp = np.log(np.maximum(photons, 1e-3))
    d_edges = np.quantile(log_d_hat, np.linspace(0, 1, n_d + 1)[1:-1]).tolist()
    p_edges = np.quantile(lp, np.linspace(0, 1, n_p + 1)[1:-1]).tolist()
    scores = np.abs(log_d_true - log_d_hat) / scale
    m = Mondrian(d_edges, p_edges, [], alpha, [])
    i, j = m.group(log_d_hat, photons)
    overall = conformal_quantile(scores, alpha)
    for a in range(n_d):
        row_q, row_n = [], []
        for b in range(n_p):
            s = scores[(i == a) & (j == b)]
            row_q.append(conformal_quantile(s, alpha) if len(s) >= min_group else overall)
            row_n.append(int(len(s)))
        m.q.append(row_q)
        m.counts.append(row_n)
    return m
