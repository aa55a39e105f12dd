"""Diffusion coefficient from blurred image stacks (seed 001): 16-frame stacks -> D + 90 % interval.

Predictors: ``trees`` (default; XGBoost on log D from trajectory, blob-shape and intensity features,
compiled with TL2cgen, Mondrian-conformal 90 % intervals), ``trees-xgboost`` (the same bundle on
XGBoost's own predictor), ``msd`` (trajectory-D: MSD line fit, slope / 4) and ``cve`` (covariance
estimator with motion-blur and localisation-error correction, Vestergaard et al. 2014).
"""

from __future__ import annotations

from ...core.modality import ArraySpec, HeaderField, Modality, PacketKind, PredictorSpec, ResultSpec
from .instrument import PROFILE

NAME = "diffusion"
MIN_SIDE = 11  #: the localisation ROI is 11x11 pixels
FLAGS = {1: "out-of-range", 2: "few-photons", 4: "instrument-mismatch"}  # predictors.FLAG_RANGE, FLAG_PHOTONS


STACKS = PacketKind(
    name="stacks",
    fields=(
        HeaderField("frames", int, min=2, max=4096, doc="frames per stack (T >= 2)"),
        HeaderField("height", int, min=MIN_SIDE, max=1024, doc="stack rows (pixels)"),
        HeaderField("width", int, min=MIN_SIDE, max=1024, doc="stack columns (pixels)"),
        HeaderField("pixel_nm", float, 200.0, positive=True, doc="pixel size in the sample plane (nm)"),
        HeaderField("frame_s", float, positive=True, doc="frame period (s), required"),
        HeaderField("exposure_s", float, 0.0, min=0.0, doc="exposure per frame (s); 0 or absent = frame_s"),
        HeaderField("baseline", float, 0.0, min=0.0, doc="camera offset (ADU)"),
        HeaderField("adu_per_photon", float, 1.0, positive=True, doc="ADU per detected photon"),
    ),
    arrays=(ArraySpec("stacks", ("<u2",), ("n", "frames", "height", "width"),
                      doc="image stacks around one moving molecule (ADU)"),),
    max_items=8192,
    doc="image stacks (T frames) centred on one diffusing molecule",
)

_F4 = ("<f4",)
RESULTS = ResultSpec(
    items=(
        ArraySpec("D", _F4, ("n",), doc="diffusion coefficient (um^2/s)"),
        ArraySpec("D_lo", _F4, ("n",), doc="lower end of the 90 % interval (um^2/s)"),
        ArraySpec("D_hi", _F4, ("n",), doc="upper end of the 90 % interval (um^2/s)"),
        ArraySpec("photons", _F4, ("n",), doc="measured signal photons per frame"),
        ArraySpec("flags", ("<u1",), ("n",), doc="1 out of the trained range, 2 too few photons, "
                                                  "4 instrument outside what the model covers (no interval)"),
    ),
    flags=FLAGS,
    intervals=("D_lo", "D_hi"),
    mismatch_flag=4,
    doc="one row per stack",
)


def validate(packet):
    """Checks the declaration cannot express (the codec already rejects non-finite scalars, fields out
    of their declared range such as T < 2, and wrong sizes): exposure defaults to, and may not exceed,
    the frame period."""
    from ...core.wire import PacketError

    h = packet.header
    if h["exposure_s"] == 0.0:
        h["exposure_s"] = float(h["frame_s"])
    if h["exposure_s"] > h["frame_s"] * (1 + 1e-9):
        raise PacketError("bad-value", f"exposure_s={h['exposure_s']} longer than frame_s={h['frame_s']}")
    return packet


def _baseline(method: str):
    def factory():
        from .predictors import TrackBaseline

        return TrackBaseline(method)
    return factory


def _trees(kind: str = "compiled"):
    def factory(path=None):
        from .predictors import TreesPredictor

        return TreesPredictor(path, backend=kind)
    return factory


PREDICTORS = (
    PredictorSpec("trees", _trees("compiled"),
                  "compiled XGBoost on log D (trajectory + blob-shape + intensity features), conformal 90 % interval",
                  from_bundle=_trees("compiled")),
    PredictorSpec("trees-xgboost", _trees("xgboost"), "the same bundle on XGBoost's own predictor",
                  from_bundle=_trees("xgboost")),
    PredictorSpec("msd", _baseline("msd"), "trajectory-D: per-frame Gaussian-mask positions, MSD line fit (lags 1-4), "
                  "slope / 4; plug-in interval"),
    PredictorSpec("cve", _baseline("cve"), "covariance estimator with blur + localisation-error correction "
                  "(Vestergaard 2014); plug-in interval"),
)


def _commands():
    from .commands import DiffusionCommands

    return DiffusionCommands()


def _view(**options):
    from .view import DiffusionView

    return DiffusionView(**options)


MODALITY = Modality(
    name=NAME,
    title="Diffusion from blurred frames",
    packets=(STACKS,),
    results=RESULTS,
    predictors=PREDICTORS,
    default_predictor="trees",
    validate=validate,
    view=_view,
    commands=_commands(),
    profile=PROFILE,
    doc="image stacks around one moving molecule -> D + 90 % interval (seed 001)",
)
