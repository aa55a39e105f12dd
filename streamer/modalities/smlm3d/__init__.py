"""3D SMLM with an astigmatic PSF (seed 002): camera frames -> each emitter's x, y, z, photons + 90 % intervals.

Predictors: ``trees`` (default; MLE fit corrected + scored by compiled trees trained on structure-
sampled simulations, conformal intervals), ``trees-csr`` (the same trained on CSR samples),
``trees-xgboost`` (the default bundle on XGBoost's predictor) and ``mle`` (DoG + batched Poisson MLE,
intervals +- 1.645 CRLB; it fits with the stream's calibration curve when the worker has its
instrument profile). Instrument profiles (issue 14): ``instrument.py``; detections of a stream whose
instrument the model does not cover carry flag 64 and no intervals. Physics, simulator, metrics and models live in this package.
"""

from __future__ import annotations

from ...core.modality import ArraySpec, HeaderField, Modality, PacketKind, PredictorSpec, ResultSpec
from .instrument import PROFILE
from .localize import FLAGS, MISMATCH

NAME = "smlm3d"

FRAMES = PacketKind(
    name="frames",
    fields=(
        HeaderField("height", int, min=13, max=4096, doc="frame rows (pixels; >= the 13x13 fit window)"),
        HeaderField("width", int, min=13, max=4096, doc="frame columns (pixels)"),
        HeaderField("pixel_nm", float, 100.0, positive=True, doc="pixel size in the sample plane (nm)"),
        HeaderField("baseline", float, 100.0, min=0.0, doc="camera offset (ADU)"),
        HeaderField("adu_per_photon", float, 1.0, positive=True,
                    doc="ADU per detected photon (EMCCD: gain / sensitivity)"),
    ),
    arrays=(
        ArraySpec("frames", ("<u2",), ("n", "height", "width"), doc="camera frames (ADU)"),
        ArraySpec("frame_id", ("<i8",), ("n",), required=False, doc="acquisition frame number"),
    ),
    max_items=4096,
    doc="camera frames of blinking emitters (astigmatic PSF)",
)

_F4 = ("<f4",)
RESULTS = ResultSpec(
    items=(ArraySpec("count", ("<i4",), ("n",), doc="kept localizations in the frame"),),
    detections=(
        ArraySpec("x", _F4, ("m",), doc="nm from the frame's left edge"),
        ArraySpec("y", _F4, ("m",), doc="nm from the frame's top edge"),
        ArraySpec("z", _F4, ("m",), doc="axial position (nm, 0 = between the two foci)"),
        ArraySpec("photons", _F4, ("m",), doc="emitter photons"),
        ArraySpec("background", _F4, ("m",), doc="background photons/pixel"),
        ArraySpec("x_lo", _F4, ("m",), doc="90 % interval of x (nm)"),
        ArraySpec("x_hi", _F4, ("m",)),
        ArraySpec("y_lo", _F4, ("m",), doc="90 % interval of y (nm)"),
        ArraySpec("y_hi", _F4, ("m",)),
        ArraySpec("z_lo", _F4, ("m",), doc="90 % interval of z (nm)"),
        ArraySpec("z_hi", _F4, ("m",)),
        ArraySpec("score", _F4, ("m",), doc="trees: P(real emitter); mle: DoG significance"),
        ArraySpec("flags", ("<u1",), ("m",), doc="bit 0 rejected (not a localization to keep)"),
    ),
    flags=FLAGS,
    intervals=("x_lo", "x_hi", "y_lo", "y_hi", "z_lo", "z_hi"),
    mismatch_flag=MISMATCH,  # the stream's instrument lies outside what the model covers (issue 14)
    doc="one row per candidate; rows with flag bit 0 (rejected) are not localizations",
)




def _mle():
    from .predictors import MLEPredictor

    return MLEPredictor()


def _trees(bundle: str, kind: str = "auto"):
    def factory():
        from .predictors import TreesPredictor

        return TreesPredictor(bundle, kind=kind)
    return factory


def _from_bundle(kind: str = "auto"):
    """The trees predictor on another bundle directory (one trained for an instrument profile)."""
    def make(path):
        from .predictors import TreesPredictor

        return TreesPredictor(str(path), kind=kind)
    return make


PREDICTORS = (
    PredictorSpec("trees", _trees("trees-structure"),
                  "MLE fit + compiled trees (structure-trained): bias correction, candidate score, conformal 90 % "
                  "intervals; packets of < 1.4 localizations/frame keep only the surest and drop fits of merged or "
                  "imprecise pairs (sparse acquisitions)",
                  from_bundle=_from_bundle()),
    PredictorSpec("trees-csr", _trees("trees-csr"), "the same trees trained on CSR-sampled emitters",
                  from_bundle=_from_bundle()),
    PredictorSpec("trees-xgboost", _trees("trees-structure", "xgboost"), "the default bundle on XGBoost's predictor",
                  from_bundle=_from_bundle("xgboost")),
    PredictorSpec("mle", _mle, "DoG detection + batched Poisson MLE of the astigmatic PSF; +-1.645 CRLB intervals"),
)


def _view(**options):
    from .view import SMLM3DView

    return SMLM3DView(**options)


def _commands():
    from .commands import SMLM3DCommands

    return SMLM3DCommands()


MODALITY = Modality(
    name=NAME,
    title="3D SMLM (astigmatic PSF)",
    packets=(FRAMES,),
    results=RESULTS,
    predictors=PREDICTORS,
    default_predictor="trees",
    view=_view,
    commands=_commands(),
    profile=PROFILE,
    doc="camera frames of blinking emitters -> each emitter's x, y, z, photons + 90 % intervals (seed 002)",
)
