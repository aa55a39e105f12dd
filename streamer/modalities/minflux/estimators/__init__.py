"""Estimator plug-ins behind one interface (:class:`Estimator`)."""

from __future__ import annotations

from .base import Estimator
from .closed_form import ClosedFormEstimator
from .mle import MLEEstimator

PHYSICS_ESTIMATORS = {"closed-form": ClosedFormEstimator, "mle": MLEEstimator}

__all__ = ["Estimator", "ClosedFormEstimator", "MLEEstimator", "PHYSICS_ESTIMATORS"]
