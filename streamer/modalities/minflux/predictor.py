"""What a worker runs per batch: distance + 90% interval + quality flags + model id.

``load_predictor(spec)`` is the single entry point the pipeline and benchmarks use. A spec is
an estimator name from :data:`PREDICTORS` (e.g. ``closed-form``, ``mle``); the trained-model
predictors register themselves here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .estimators import PHYSICS_ESTIMATORS
from .tuples import TupleBatch

from .prediction import (  # noqa: F401 (re-exported: the flags and result type of every tuple predictor)
    FLAG_INVALID_INPUT, FLAG_LOW_PHOTONS, FLAG_NO_INTERVAL, FLAG_NONPHYSICAL, FLAG_OUT_OF_RANGE, Prediction, Predictor)


@dataclass
class PhysicsPredictor:
    """A physics estimator without interval calibration (bounds NaN, FLAG_NO_INTERVAL)."""

    estimator_name: str
    background: float = 1.0
    v0: float = 1.0

    def __post_init__(self) -> None:
        self._estimator = PHYSICS_ESTIMATORS[self.estimator_name](background=self.background, v0=self.v0)
        self.model_id = f"{self.estimator_name}(b={self.background:g},v0={self.v0:g})"

    def predict(self, batch: TupleBatch) -> Prediction:
        d = self._estimator.predict(batch).astype(np.float32)
        nan = np.full(len(d), np.nan, np.float32)
        return Prediction(d, nan, nan.copy(), np.full(len(d), FLAG_NO_INTERVAL, np.uint8), self.model_id)


#: spec -> factory; trained-model predictors add themselves via :func:`register`
PREDICTORS: dict[str, Callable[[], Predictor]] = {
    name: (lambda name=name: PhysicsPredictor(name)) for name in PHYSICS_ESTIMATORS
}


def register(spec: str, factory: Callable[[], Predictor]) -> None:
    PREDICTORS[spec] = factory


def load_predictor(spec: str) -> Predictor:
    """Instantiate the predictor named ``spec``; clear error listing the known ones."""
    if spec not in PREDICTORS:
        raise ValueError(f"unknown predictor {spec!r}; known: {', '.join(sorted(PREDICTORS))}")
    return PREDICTORS[spec]()


def _trained_model(regime: str, backend: str) -> Callable[[], Predictor]:
    """Factory for a trained bundle; imported lazily so physics-only workers skip XGBoost."""

    def make() -> Predictor:
        from .model_predictor import ModelPredictor

        return ModelPredictor(regime, backend=backend)

    return make


# "static"/"dynamic": compiled ensemble (auto-routed); "<regime>-xgboost": XGBoost's own predictor
for _regime in ("static", "dynamic"):
    register(_regime, _trained_model(_regime, "auto"))
    register(f"{_regime}-xgboost", _trained_model(_regime, "xgboost"))


def _general(backend: str) -> Callable[[], Predictor]:
    """The instrument-aware bundle with a fixed instrument (STREAMER_MINFLUX_V0 / _BACKGROUND, default 1, 1)."""

    def make() -> Predictor:
        import os

        from .general import GeneralPredictor

        return GeneralPredictor("general", v0=float(os.environ.get("STREAMER_MINFLUX_V0") or 1.0),
                                background=float(os.environ.get("STREAMER_MINFLUX_BACKGROUND") or 1.0), backend=backend)

    return make


register("general-fixed", _general("auto"))
