"""What every MINFLUX tuple predictor returns (:class:`Prediction`) and its flag bits: the layer below
both the estimator registry (:mod:`.predictor`) and the trained-model predictor (:mod:`.model_predictor`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .tuples import TupleBatch

# quality flag bits (uint8 per tuple); documented in the README's result schema
FLAG_NO_INTERVAL = 1  # the estimator carries no calibrated interval (bounds are NaN)
FLAG_LOW_PHOTONS = 2  # fewer photons than the model was trained/calibrated on
FLAG_OUT_OF_RANGE = 4  # estimate outside the calibrated distance range
FLAG_NONPHYSICAL = 8  # counts inconsistent with two emitters (e.g. visibility > v0 on both axes)
FLAG_INVALID_INPUT = 16  # the tuple's positions/centre/time were NaN/inf: no estimate (the rest of the packet is fine)
FLAG_UNCALIBRATED = 32  # self-calibrating predictor: the stream's instrument is not yet calibrated (prior used)
# the stream's instrument (its profile, header L/2, beam positions or live-calibrated v0/b) lies outside
# what the serving model covers: estimate kept, every interval NaN (issue 14). Not FLAG_UNCALIBRATED:
# that one is transient and keeps the interval of the prior instrument
FLAG_INSTRUMENT_MISMATCH = 64
# self-calibrating predictor: the live segmentation labels the tuple 1-on or background-only, so it
# has no second emitter to measure: distance and interval NaN (with FLAG_NO_INTERVAL), model not run
FLAG_NOT_TWO_ON = 128


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
