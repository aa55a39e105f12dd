"""What a worker runs per batch: distance + 90% interval + quality flags + model id.

``load_predictor(spec)`` is the single entry point the pipeline and benchmarks use. A spec is
an estimator name from :data:`PREDICTORS` (e.g. ``closed-form``, ``mle``); the trained-model
predictors register themselves here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from .estimators import PHYSICS_ESTIMATORS
from .tuples import TupleBatch

# quality flag bits (uint8 per tuple); documented in the README's result schema
FLAG_NO_INTERVAL = 1  # the estimator carries no calibrated interval (bounds are NaN)
FLAG_LOW_PHOTONS = 2  # fewer photons than the model was trained/calibrated on
FLAG_OUT_OF_RANGE = 4  # estimate outside the calibrated distance range
FLAG_NONPHYSICAL = 8  # counts inconsistent with two emitters (e.g. visibility > v0 on both axes)


@dataclass(frozen=True)
class Prediction:
    """Per-tuple results, all (n,)."""

    distance: np.ndarray  # float32 nm
    lower: np.ndarray  # float32 nm, NaN when FLAG_NO_INTERVAL
    upper: np.ndarray  # float32 nm
    flags: np.ndarray  # uint8 bit set of FLAG_*
    model_id: str


class Predictor(Protocol):
    model_id: str

    def predict(self, batch: TupleBatch) -> Prediction: ...


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
