"""Worker-side predictors: a packet of frames in, one row per detected electron out.

``trees``: the trained detection (candidate classifier) + compiled XGBoost entry point + conformal
90% radius; ``score`` = radius, the efficiency/precision knob (keep detections with score below a cut).
``centroid3x3`` etc.: the seed's baselines with the seed's own detection (:data:`.detect.SEED_RULE`;
``shared_detection=True`` uses the trees' detection instead); no error radius (NaN).
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from streamer.core.modality import Packet

from . import fast as _fast
from .detect import BASELINES, SEED_RULE, DetectParams, Detections, baseline_xy, detect

FLAG_EDGE, FLAG_CROWDED, FLAG_CHARGE_RANGE, FLAG_MISMATCH = 1, 2, 4, 8
#: FLAG_MISMATCH: the stream's instrument lies outside what the model covers (set by the worker, issue 14)
FLAGS = {FLAG_EDGE: "edge", FLAG_CROWDED: "crowded", FLAG_CHARGE_RANGE: "charge-out-of-range",
         FLAG_MISMATCH: "instrument-mismatch"}


def _detect(packet: Packet, params: DetectParams):
    """Detections of a packet (raw ADU frames, converted to electrons only around candidates)."""
    h = packet.header
    frames = packet.arrays["frames"]
    return frames, detect(frames, params, float(h.get("adu_per_e", 1.0)), float(h.get("offset", 0.0)))


def _common(det: Detections, e_shape, params: DetectParams, charge_size=None) -> dict[str, np.ndarray]:
    """Columns every predictor returns: item, charge, size, flags (edge, crowded).
    ``charge_size``: (charge, size) when already known (the trees' features hold both)."""
    n, h, w = e_shape
    r = params.window_r
    flags = np.zeros(len(det), np.uint8)
    edge = (det.row < r) | (det.col < r) | (det.row >= h - r) | (det.col >= w - r)
    flags[edge] |= FLAG_EDGE
    count = np.bincount(det.item, minlength=n).astype(np.int32)
    if _fast.HAVE_NUMBA:
        if charge_size is None:
            charge_size = _fast._charge_size(det.window, params.threshold_e)
        if len(det):
            flags[_fast._crowded(det.item, det.row, det.col, r, n, h)] |= FLAG_CROWDED
        return {"item": det.item.astype(np.int32), "charge": np.asarray(charge_size[0], np.float32),
                "size": np.asarray(charge_size[1], np.int32), "flags": flags, "count": count}
    above = det.window > params.threshold_e
    charge = np.where(above, det.window, 0.0).sum(axis=(1, 2)).astype(np.float32)
    size = above.sum(axis=(1, 2)).astype(np.int32)
    if len(det):
        # another detection inside this one's window: a peak image, gathered per window
        img = np.zeros((n, h + 2 * r, w + 2 * r), np.uint8)
        img[det.item, det.row + r, det.col + r] = 1
        k = np.arange(-r, r + 1)
        near = img[det.item[:, None, None], (det.row + r)[:, None, None] + k[None, :, None],
                   (det.col + r)[:, None, None] + k[None, None, :]].sum(axis=(1, 2))
        flags[near > 1] |= FLAG_CROWDED
    return {"item": det.item.astype(np.int32), "charge": charge, "size": size, "flags": flags, "count": count}


def _warm_up(predictor) -> None:
    """Run the kernels once on a tiny synthetic packet (uint16 and float32 frames): numba loads its
    cached machine code on first call (~0.2 s per process), which would otherwise land on the
    first real packet of every worker."""
    if not _fast.HAVE_NUMBA:
        return
    for dtype in (np.uint16, np.float32):
        fr = np.full((1, 24, 24), 100, dtype)
        fr[0, 10:13, 10:13] = 400
        fr[0, 11, 11] = 900
        fr[0, 11, 15] = 500  # a second maximum: neighbour search, valley, orphan rule
        predictor.predict(Packet("warm-up", 0, 0.0, "electron", "frames", 1,
                                 {"n": 1, "height": 24, "width": 24, "adu_per_e": 1.0, "offset": 100.0},
                                 {"frames": fr}))


#: worker environment: merge every pair of detections the pair classifier calls one electron's with
#: at least this probability (0-1), all pairs within the window considered: fewer electrons counted
#: twice for fewer counted at all in crowded frames (docs/electron/README.md, "Counted twice")
MERGE_ENV = "STREAMER_ELECTRON_MERGE_P"


def strict_merge_p() -> float | None:
    """The pair-stage cut the worker's environment asks for (None: the bundle's own)."""
    v = os.environ.get(MERGE_ENV, "").strip()
    if not v:
        return None
    try:
        p = float(v)
    except ValueError:
        raise ValueError(f"{MERGE_ENV}={v!r}: expected a probability between 0 and 1") from None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{MERGE_ENV}={v!r}: expected a probability between 0 and 1")
    return p


class BaselinePredictor:
    """The seed's max-pixel / centroid estimators on the shared detection."""

    def __init__(self, name: str = "centroid3x3", params: DetectParams = SEED_RULE,
                 shared_detection: bool = False) -> None:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
        self.name, self.params = name, params
        self.model_id = f"electron-{name}"
        self._model = None
        if shared_detection:  # the trained model's detection, so baselines see identical events
            try:
                from .model import TreeModel

                self._model = TreeModel(kind="compiled")
                self.params = self._model.params
                self.model_id += "+" + self._model.model_id.split("-")[-1]
            except (FileNotFoundError, ValueError, OSError):
                self._model = None  # no bundle: rule-based merge (DetectParams.merge_px)
        _warm_up(self)

    def predict(self, packet: Packet) -> dict[str, np.ndarray]:
        if self._model is not None:
            h = packet.header
            e = packet.arrays["frames"]
            det = self._model.detect(e, float(h.get("adu_per_e", 1.0)), float(h.get("offset", 0.0)))
        else:
            e, det = _detect(packet, self.params)
        out = _common(det, e.shape, self.params)
        x, y = baseline_xy(det, self.name)
        nan = np.full(len(det), np.nan, np.float32)
        out.update(x=x.astype(np.float32), y=y.astype(np.float32), radius=nan, score=nan)
        return out


class TreesPredictor:
    """Compiled (or XGBoost) trees: sub-pixel entry point + conformal 90% radius."""

    def __init__(self, kind: str = "compiled", directory=None) -> None:
        from .instrument import coverage
        from .model import BUNDLE_DIR, TreeModel

        self.model = TreeModel(directory or BUNDLE_DIR, kind=kind, nthread=1)
        #: the instruments this bundle answers for (issue 14; the worker flags packets outside it)
        self.coverage = coverage(self.model.manifest)
        self.model_id = self.model.model_id + ("" if kind == "compiled" else f"-{kind}")
        merge_p = strict_merge_p()
        if merge_p is not None:  # the user's counting trade (docs/electron/README.md, "Counted twice")
            if "merge" not in self.model.backends:
                raise ValueError(f"{MERGE_ENV} needs a bundle with a pair classifier; this one has none")
            self.model.params = replace(self.model.params, merge_p=merge_p, merge_below=2.0)
            self.model_id += f"+merge{merge_p:g}"
        self.params = self.model.params
        self.charge_range = self.model.manifest.get("charge_range", [0.0, np.inf])
        _warm_up(self)

    def predict(self, packet: Packet) -> dict[str, np.ndarray]:
        h = packet.header
        e = packet.arrays["frames"]
        adu, off = float(h.get("adu_per_e", 1.0)), float(h.get("offset", 0.0))
        # no window array: the features are read from the raw frames (same numbers, less memory traffic)
        det = self.model.detect(e, adu, off, windows=False)
        res = self.model.predict_all(det, e.shape, e, adu, off)
        out = _common(det, e.shape, self.params, (res["charge"], res["size"]))
        out["x"] = (det.col + res["dx"]).astype(np.float32)
        out["y"] = (det.row + res["dy"]).astype(np.float32)
        out["radius"] = res["radius"]
        out["score"] = res["score"]
        lo, hi = self.charge_range
        out["flags"][(out["charge"] < lo) | (out["charge"] > hi)] |= FLAG_CHARGE_RANGE
        return out


def make_predictor(name: str = "trees"):
    """Predictor by name: ``trees`` (compiled), ``trees-xgboost``, or a baseline name."""
    if name == "trees":
        return TreesPredictor("compiled")
    if name == "trees-xgboost":
        return TreesPredictor("xgboost")
    return BaselinePredictor(name)
