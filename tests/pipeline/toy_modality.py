"""A modality that exists only in the tests: spectra in, per-spectrum totals + a table of peaks out.

It proves the seam: the sink, workers, writer and monitor shell serve it without a line of core or
pipeline knowing it. Loaded through ``STREAMER_MODALITIES=toy_modality:MODALITY`` (this folder on
PYTHONPATH), exactly as a third-party plug-in without an installed entry point would be.
"""

from __future__ import annotations

import numpy as np

from streamer.core.modality import ArraySpec, HeaderField, Modality, Packet, PacketKind, PredictorSpec, ResultSpec
from streamer.core.recording import Recording
from streamer.core.wire import PacketError

FLAG_SATURATED = 1

SPECTRA = PacketKind(
    "spectra",
    fields=(HeaderField("k", int, min=1, max=4096, doc="channels per spectrum"),
            HeaderField("gain", float, 1.0, positive=True, doc="counts per unit")),
    arrays=(ArraySpec("values", ("<u2", "<f4"), ("n", "k"), doc="one spectrum per item"),
            ArraySpec("spectrum_id", "<i8", ("n",), required=False)),
    max_items=100_000,
)
RESULTS = ResultSpec(
    items=(ArraySpec("total", "<f8", ("n",)), ArraySpec("peak", "<i4", ("n",)), ArraySpec("flags", "u1", ("n",)),
           ArraySpec("spectrum_id", "<i8", ("n",), required=False)),
    detections=(ArraySpec("channel", "<i4", ("m",)), ArraySpec("height", "<f4", ("m",))),
    flags={FLAG_SATURATED: "saturated"},
)


def validate(packet: Packet) -> Packet:
    if packet.header["k"] > 1024:
        raise PacketError("toy-too-wide", f"k={packet.header['k']} > 1024")
    return packet


class SumPredictor:
    """Totals, argmax and every channel above 10 x gain (vectorized over the whole packet)."""

    model_id = "toy-sum-v1"

    def predict(self, packet: Packet) -> dict[str, np.ndarray]:
        v = packet.arrays["values"].astype(np.float32) / np.float32(packet.header["gain"])
        item, channel = np.nonzero(v > 10)
        out = {"total": v.sum(axis=1, dtype=np.float64), "peak": v.argmax(axis=1).astype(np.int32),
               "flags": np.where(packet.arrays["values"].max(axis=1) >= 65535, FLAG_SATURATED, 0).astype(np.uint8),
               "item": item.astype(np.int32), "channel": channel.astype(np.int32), "height": v[item, channel]}
        if "spectrum_id" in packet.arrays:
            out["spectrum_id"] = packet.arrays["spectrum_id"]
        return out


class ToyView:
    """A headless view: remembers totals and detections it was given (the shell calls ingest/refresh)."""

    title = "toy spectra"

    def __init__(self, **options):
        self.totals: list[np.ndarray] = []
        self.detections = 0
        self.refreshes = 0

    def widget(self):  # pragma: no cover - only the headless parts are exercised
        from pyqtgraph.Qt import QtWidgets

        return QtWidgets.QLabel("toy")

    def ingest(self, results):
        for r in results:
            self.totals.append(np.asarray(r["total"]))
            self.detections += len(r["channel"])

    def refresh(self):
        self.refreshes += 1


def simulate(n: int = 2000, k: int = 64, seed: int = 0) -> Recording:
    rng = np.random.default_rng(seed)
    values = rng.poisson(3.0, (n, k)).astype(np.uint16)
    peaks = rng.integers(0, k, n)
    values[np.arange(n), peaks] = 20 + rng.integers(0, 40, n).astype(np.uint16)  # Poisson(3) never reaches 20 here
    return Recording("toy", "spectra", {"values": values, "spectrum_id": np.arange(n, dtype=np.int64)},
                     {"k": k}, {"peak": peaks}, {"seed": seed})


MODALITY = Modality(
    name="toy", title="toy spectra", packets=(SPECTRA,), results=RESULTS,
    predictors=(PredictorSpec("sum", SumPredictor, "totals and peaks"),), default_predictor="sum",
    reasons={"toy-too-wide": "more than 1024 channels"}, validate=validate, view=ToyView,
)
