"""MINFLUX: photon-count tuples -> two-emitter distance + 90% interval (seed 000).

The modality declaration below is all that core and pipeline see; physics, estimators, features,
models, loaders and the monitor view live in this package.
"""

from __future__ import annotations

from dataclasses import replace

from ...core.modality import Packet, PredictorSpec
from .commands import MinfluxCommands
from .wire import DECLARATION, RESULTS, result_arrays


class TuplePredictor:
    """Adapts a tuple predictor (:mod:`.predictor`: TupleBatch -> Prediction) to the modality protocol."""

    def __init__(self, spec: str):
        from .predictor import load_predictor

        self.inner = load_predictor(spec)
        self.model_id = self.inner.model_id

    def predict(self, packet: Packet) -> dict:
        p = self.inner.predict(packet.extra["batch"])
        return result_arrays(packet, p.distance, p.lower, p.upper, p.flags)


def _live():
    from .live import LiveModalityPredictor

    return LiveModalityPredictor()


def _spec(name: str, doc: str) -> PredictorSpec:
    return PredictorSpec(name, lambda: TuplePredictor(name), doc)


PREDICTORS = (
    _spec("static", "trained static-ruler model, compiled trees (auto-routed) + label-conditional 90% interval"),
    _spec("dynamic", "trained dynamic-trace model, compiled trees (auto-routed) + 90% interval"),
    _spec("static-xgboost", "the static model on XGBoost's own predictor"),
    _spec("dynamic-xgboost", "the dynamic model on XGBoost's own predictor"),
    PredictorSpec("general", lambda: _live(),
                  "instrument-aware model (continuous 2-68 nm, v0/b/L/2 as inputs) with live self-calibration "
                  "(segmentation, v0, b; STREAMER_MINFLUX_V0/_BACKGROUND override) and per-trace distance"),
    _spec("closed-form", "exact 3-count harmonic estimator (no interval)"),
    _spec("mle", "per-tuple Poisson MLE, batched Levenberg-Marquardt (no interval)"),
)


def _view(**options):
    from .view import MinfluxView

    return MinfluxView(**options)


MODALITY = replace(DECLARATION, predictors=PREDICTORS, view=_view, commands=MinfluxCommands())
