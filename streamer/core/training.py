"""Generic training helpers every modality uses: booster parameters, early-stopped fitting, versions.

A modality's own training module simulates, splits by group (trace, structure, frame) so that no
group is in two of train / validation / calibration / test, computes its features and calls these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

@dataclass
class BoosterParams:
    # small on purpose: depth 4 x <= 100 trees is as accurate as depth 6-8 x 150-500 (see the
    # ablation in bench/RESULTS.md) and ~2x cheaper per tuple
    max_depth: int = 4
    eta: float = 0.3
    max_rounds: int = 100
    min_child_weight: float = 50.0
    subsample: float = 0.8
    reg_lambda: float = 1.0
    max_bin: int = 256

    def xgb_params(self) -> dict:
        return {
            "max_depth": self.max_depth, "eta": self.eta, "min_child_weight": self.min_child_weight,
            "subsample": self.subsample, "lambda": self.reg_lambda, "max_bin": self.max_bin,
            "tree_method": "hist",
        }


@dataclass
class Split:
    X: np.ndarray
    y: np.ndarray
    w: np.ndarray
    photons: np.ndarray
    trace_id: np.ndarray


def fit_booster(params: dict, train: Split, val: Split, max_rounds: int, early_stopping: int):
    """XGBoost with early stopping on ``val``; returns (booster cut at the best round, rounds)."""
    import xgboost as xgb

    dtrain = xgb.QuantileDMatrix(train.X, train.y, weight=train.w)
    dval = xgb.QuantileDMatrix(val.X, val.y, weight=val.w, ref=dtrain)
    booster = xgb.train(params, dtrain, max_rounds, evals=[(dval, "val")],
                        early_stopping_rounds=early_stopping, verbose_eval=False)
    # keep only the trees up to the best validation round: nothing unused is shipped or compiled
    best = booster.best_iteration + 1
    return booster[:best], best


def xgb_version() -> str:
    import xgboost

    return xgboost.__version__
