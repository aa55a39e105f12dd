"""Electron counting and sub-pixel entry-point localization for direct electron detectors (seed 003).

Packets (kind ``frames``): ``n``, ``height``, ``width``, ``frames`` <u2 or <f4 (n, H, W) in ADU,
``pixel_um`` (5.0), ``adu_per_e`` (1.0), ``offset`` (0, ADU), optional ``frame_id`` <i8 (n,).
Results: per detection ``x``, ``y`` (pixels; pixel (r, c) is centred on x=c, y=r), ``radius``
(90% conformal error radius, pixels), ``score`` (= radius: the knob), ``charge`` (e- above the
40 e- threshold in the 13x13 window), ``size`` (pixels above threshold), ``flags``; per frame ``count``.
Instrument profile (issue 14; parameters in ``instrument.py``): detections of a stream whose instrument
the model does not cover carry flag 8 and no radius/score.
"""

from __future__ import annotations

from streamer.core.modality import ArraySpec, HeaderField, Modality, Packet, PacketKind, PredictorSpec, ResultSpec

from .detect import BASELINES
from .instrument import PROFILE
from .predictor import FLAG_MISMATCH, FLAGS

MAX_PIXELS = 1 << 28  # per packet (512 MiB of float32): larger packets are refused, not attempted

try:  # core's error type (exists once streamer.core.wire is in place)
    from streamer.core.wire import PacketError
except ImportError:  # pragma: no cover - during the restructuring
    class PacketError(ValueError):
        def __init__(self, reason: str, detail: str = ""):
            super().__init__(f"{reason}: {detail}" if detail else reason)
            self.reason, self.detail = reason, detail


FRAMES = PacketKind(
    name="frames",
    fields=(
        HeaderField("height", int, min=1, max=1 << 14, doc="frame height, pixels"),
        HeaderField("width", int, min=1, max=1 << 14, doc="frame width, pixels"),
        HeaderField("pixel_um", float, 5.0, positive=True, doc="pixel pitch, um"),
        HeaderField("adu_per_e", float, 1.0, positive=True, doc="ADU per ionization electron"),
        HeaderField("offset", float, 0.0, doc="dark offset, ADU"),
    ),
    arrays=(
        ArraySpec("frames", ("<u2", "<f4"), ("n", "height", "width"), doc="raw frames, ADU"),
        ArraySpec("frame_id", ("<i8",), ("n",), required=False, finite=False, doc="camera frame number"),
    ),
    doc="counting-mode frames of a direct electron detector",
)

RESULTS = ResultSpec(
    items=(ArraySpec("count", ("<i4",), ("n",), doc="electrons detected in the frame"),),
    detections=(
        ArraySpec("x", ("<f4",), ("m",), doc="entry point x (column), pixels"),
        ArraySpec("y", ("<f4",), ("m",), doc="entry point y (row), pixels"),
        ArraySpec("radius", ("<f4",), ("m",), finite=False, doc="90% error radius, pixels (NaN for baselines)"),
        ArraySpec("score", ("<f4",), ("m",), finite=False, doc="knob: lower = more precise (= radius)"),
        ArraySpec("charge", ("<f4",), ("m",), doc="charge above threshold in the event window, e-"),
        ArraySpec("size", ("<i4",), ("m",), doc="pixels above threshold in the event window"),
        ArraySpec("flags", ("<u1",), ("m",), finite=False, doc="bits: see flags"),
    ),
    flags=FLAGS,
    # the radius is the 90 % interval; the score is the same number (the knob): both NaN when the
    # stream's instrument lies outside what the model covers
    intervals=("radius", "score"),
    mismatch_flag=FLAG_MISMATCH,
    doc="one row per detected electron; count per frame",
)


def validate(packet: Packet) -> Packet:
    """Checks the declaration cannot express."""
    h = packet.header  # (field ranges and the frames' shape are checked by the codec, from the declaration)
    if packet.n * h["height"] * h["width"] > MAX_PIXELS:
        raise PacketError("oversized", f"{packet.n} frames of {h['height']}x{h['width']} > {MAX_PIXELS} pixels")
    return packet


def _factory(name: str):
    def make():
        from .predictor import make_predictor

        return make_predictor(name)

    return make


def _from_bundle(kind: str):
    """The trees predictor on another bundle (one trained for an instrument profile)."""
    def make(path):
        from .predictor import TreesPredictor

        return TreesPredictor(kind, path)

    return make


def _view(*args, **kwargs):
    from .view import ElectronView

    return ElectronView(*args, **kwargs)


def _commands():
    from . import commands

    return commands


class _LazyCommands:
    """Defers importing the command module (argparse/evaluation) until a verb is used."""

    def __getattr__(self, name):
        return getattr(_commands(), name)


MODALITY = Modality(
    name="electron",
    title="Electron counting (direct electron detector)",
    packets=(FRAMES,),
    results=RESULTS,
    predictors=(
        PredictorSpec("trees", _factory("trees"), "compiled XGBoost entry point + conformal 90% radius (default; "
                      "STREAMER_ELECTRON_MERGE_P sets a stricter pair merge)",
                      from_bundle=_from_bundle("compiled")),
        PredictorSpec("trees-xgboost", _factory("trees-xgboost"), "same model through XGBoost (comparison)",
                      from_bundle=_from_bundle("xgboost")),
        *(PredictorSpec(b, _factory(b), f"seed baseline {b}") for b in BASELINES),
    ),
    default_predictor="trees",
    validate=validate,
    view=_view,
    commands=_LazyCommands(),
    profile=PROFILE,
    doc=__doc__ or "",
)
