"""The trained-model :class:`~streamer.predictor.Predictor`: features -> tree ensemble -> interval -> flags.

Per batch this is fully vectorized numpy plus one backend call (compiled or XGBoost native); the
conformal interval uses the quantiles stored at calibration time (no MAPIE on the hot path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core import conformal, model_bundle
from . import debias
from .features import compute_features
from .prediction import FLAG_LOW_PHOTONS, FLAG_OUT_OF_RANGE, Prediction
from .tuples import TupleBatch


#: MINFLUX's shipped bundles (``static``, ``dynamic``)
MODELS_DIR = model_bundle.DEFAULT_MODELS_DIR / "minflux"


def bundle_path(bundle: str | Path) -> Path:
    """A bundle directory, or the name of a shipped one under :data:`MODELS_DIR`."""
    p = Path(bundle)
    return p if (p / model_bundle.MANIFEST).is_file() else MODELS_DIR / str(bundle)


class ModelPredictor:
    """Distance + label-conditional 90% interval from a bundle in ``compiled_models/minflux/<regime>``.

    The distance is the booster output passed through the bundle's de-shrinking map (unbiased
    per true distance, see :mod:`streamer.debias`); ``raw_distance`` gives the posterior mean.

    Flags: ``FLAG_LOW_PHOTONS`` below the 0.5% photon quantile of the training tuples (a
    background-only or bleached tuple, or the low tail the model saw rarely);
    ``FLAG_OUT_OF_RANGE`` above the 99.5% quantile (photon counts the model and its calibration
    never saw) or when no distance in the calibrated range is plausible.
    """

    def __init__(self, bundle: str | Path, backend: str = "auto", nthread: int = 1, **backend_opts) -> None:
        from ...core.backends import load_backend

        self.manifest = model_bundle.load_manifest(bundle_path(bundle))
        directory = Path(self.manifest["_dir"])
        self.regime = self.manifest["regime"]
        self.feature_names = tuple(self.manifest["feature_names"])
        self.backend = load_backend(directory / self.manifest["boosters"]["point"], kind=backend,
                                    nthread=nthread, **backend_opts)
        if self.backend.num_feature != len(self.feature_names):
            raise ValueError(f"{directory}: booster expects {self.backend.num_feature} features, "
                             f"manifest lists {len(self.feature_names)}")
        self.calibration = conformal.IntervalCalibration(self.manifest["calibration"])
        self.debias = self.manifest.get("debias")
        flags = self.manifest["flags"]
        self._low = np.float32(flags["low_photons_below"])
        self._high = np.float32(flags["out_of_range_photons_above"])
        self.model_id = model_bundle.model_id(self.manifest)

    def predict(self, batch: TupleBatch) -> Prediction:
        X = compute_features(batch.counts, batch.positions, self.feature_names)
        photons = batch.counts.sum(axis=(1, 2), dtype=np.float32)
        raw = np.asarray(self.backend.predict(X), np.float32).reshape(-1)
        d = debias.apply(raw, self.debias, photons)
        # the interval's conformal score is defined on the posterior-mean output (streamer.conformal)
        lo, hi, empty = conformal.apply_intervals(raw, photons, self.calibration)
        # the conformal set is built around the posterior mean, so a de-shrunk estimate near the
        # ends of the range fell outside its own interval (33% static, 51% dynamic measured);
        # the hull with the reported distance is a superset (coverage can only rise, ~+1 nm width)
        lo, hi = np.minimum(lo, d), np.maximum(hi, d)
        flags = np.where(photons < self._low, FLAG_LOW_PHOTONS, 0).astype(np.uint8)
        flags |= np.where((photons > self._high) | empty, FLAG_OUT_OF_RANGE, 0).astype(np.uint8)
        return Prediction(d, lo, hi, flags, self.model_id)


    def raw_distance(self, batch: TupleBatch) -> np.ndarray:
        """The booster's squared-error output (posterior mean under the training prior), no de-shrinking."""
        X = compute_features(batch.counts, batch.positions, self.feature_names)
        return np.asarray(self.backend.predict(X), np.float32).reshape(-1)

