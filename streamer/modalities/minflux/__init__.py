"""MINFLUX: photon-count tuples -> two-emitter distance + 90% interval (seed 000).

The modality declaration below is all that core and pipeline see; physics, estimators, features,
models, loaders and the monitor view live in this package.
"""

from __future__ import annotations

from dataclasses import replace

from ...core.modality import Packet, PredictorSpec
from .commands import MinfluxCommands
from .wire import DECLARATION, RESULTS, result_arrays  # noqa: F401 (RESULTS: re-exported)


class TuplePredictor:
    """Adapts a tuple predictor (:mod:`.predictor`: TupleBatch -> Prediction) to the modality protocol.

    ``coverage``: what the trained bundle covers (None for the physics estimators: the worker then
    assumes the nominal instrument). Tuples whose beam positions give an L/2 outside it are flagged
    here (the worker checks the profile and a header ``half_l``; positions-only packets carry none)."""

    def __init__(self, spec: str | None = None, inner=None):
        from .predictor import load_predictor

        self.inner = inner if inner is not None else load_predictor(spec)
        self.model_id = self.inner.model_id
        manifest = getattr(self.inner, "manifest", None)
        self.coverage = None
        if manifest is not None:
            from .instrument import coverage

            self.coverage = coverage(manifest)

    def predict(self, packet: Packet) -> dict:
        b = packet.extra["batch"]
        p = self.inner.predict(b)
        out = result_arrays(packet, p.distance, p.lower, p.upper, p.flags)
        if self.coverage is not None and packet.header.get("half_l") is None:
            from .instrument import half_l_outside, mark_rows

            bad = half_l_outside(self.coverage, b.positions)
            if bad is not None:
                mark_rows(packet, out, bad, RESULTS.mismatch_flag)
        return out


class _FixedGeneral:
    """An instrument-aware (general-type) bundle at fixed v0/background, for a worker serving a
    static/dynamic name that found the bundle trained for its profile."""

    def __init__(self, bundle, v0: float, background: float):
        from .general import GeneralPredictor

        self.inner = GeneralPredictor(bundle, v0=v0, background=background)
        self.manifest = self.inner.manifest
        self.model_id = self.inner.model_id + f"(v0={v0:g},b={background:g})"

    def predict(self, batch):
        return self.inner.predict(batch)


def _live(bundle=None, **fixed):
    from .live import LiveModalityPredictor

    return LiveModalityPredictor(**({"bundle": bundle} if bundle is not None else {}), **fixed)


def _from_bundle(name: str):
    """``from_bundle`` of predictor ``name``: the bundle trained for a stream's profile (a worker
    with ``--instrument``). Its manifest decides the model type; a general-type bundle runs at the
    profile's v0/background (the profile is the user's calibration, like STREAMER_MINFLUX_V0)."""

    def load(path):
        from ...core import model_bundle

        m = model_bundle.load_manifest(path)
        values = (m.get("instrument") or {}).get("values", {})
        if m["regime"] == "general":
            fixed = {"v0": float(values.get("v0", 1.0)), "background": float(values.get("background", 1.0))}
            return _live(path, **fixed) if name == "general" else TuplePredictor(inner=_FixedGeneral(path, **fixed))
        from .model_predictor import ModelPredictor

        return TuplePredictor(inner=ModelPredictor(path, backend="xgboost" if name.endswith("-xgboost") else "auto"))

    return load


def _spec(name: str, doc: str, trained: bool = True) -> PredictorSpec:
    return PredictorSpec(name, lambda: TuplePredictor(name), doc, _from_bundle(name) if trained else None)


PREDICTORS = (
    _spec("static", "trained static-ruler model, compiled trees (auto-routed) + label-conditional 90% interval"),
    _spec("dynamic", "trained dynamic-trace model, compiled trees (auto-routed) + 90% interval"),
    _spec("static-xgboost", "the static model on XGBoost's own predictor"),
    _spec("dynamic-xgboost", "the dynamic model on XGBoost's own predictor"),
    PredictorSpec("general", lambda: _live(),
                  "instrument-aware model (continuous 2-68 nm, v0/b/L/2 as inputs) with live self-calibration "
                  "(segmentation, v0, b; STREAMER_MINFLUX_V0/_BACKGROUND override) and per-trace distance",
                  _from_bundle("general")),
    _spec("closed-form", "exact 3-count harmonic estimator (no interval)", trained=False),
    _spec("mle", "per-tuple Poisson MLE, batched Levenberg-Marquardt (no interval)", trained=False),
)


def _view(**options):
    from .view import MinfluxView

    return MinfluxView(**options)


MODALITY = replace(DECLARATION, predictors=PREDICTORS, view=_view, commands=MinfluxCommands())
