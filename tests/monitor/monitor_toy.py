"""A tiny modality for the monitor shell's tests: one value per item, two flag bits, and a view
that only remembers what it was given (a QLabel when a widget is asked for)."""

from __future__ import annotations

import time

import numpy as np

from streamer.core import wire
from streamer.core.modality import ArraySpec, HeaderField, Modality, Packet, PacketKind, ResultSpec

FLAG_ODD, FLAG_BIG = 1, 4
RESULTS = ResultSpec(items=(ArraySpec("value", "<f4", ("n",)), ArraySpec("flags", "u1", ("n",))),
                     flags={FLAG_ODD: "odd", FLAG_BIG: "big"})


class ToyView:
    title = "toy values"

    def __init__(self, **options):
        self.options = options
        self.blocks: list[list[dict]] = []
        self.refreshes = 0
        self.label = None

    def widget(self):
        from pyqtgraph.Qt import QtWidgets

        if self.label is None:
            self.label = QtWidgets.QLabel("toy")
            self.label.setMinimumSize(200, 100)
        return self.label

    def ingest(self, results):
        self.blocks.append(list(results))

    def refresh(self):
        self.refreshes += 1
        if self.label is not None:
            self.label.setText(f"toy: {sum(len(r['value']) for b in self.blocks for r in b)} values")

    def values(self) -> np.ndarray:
        return np.concatenate([r["value"] for b in self.blocks for r in b]) if self.blocks else np.zeros(0)


MODALITY = Modality(
    name="toy-monitor", title="toy", results=RESULTS, predictors=(), default_predictor="",
    packets=(PacketKind("items", fields=(HeaderField("n", int),), arrays=()),),
    view=lambda **options: ToyView(**options))


def result(seq: int, values, stream: str = "s", modality: str = "toy-monitor", t_acq: float | None = None) -> bytes:
    """An encoded result message as the sink republishes it."""
    values = np.asarray(values, np.float32)
    n = len(values)
    flags = (np.where(np.arange(n) % 2 == 1, FLAG_ODD, 0) | np.where(values > 100, FLAG_BIG, 0)).astype(np.uint8)
    packet = Packet(stream, seq, time.time() if t_acq is None else t_acq, modality, "items", n, {"n": n}, {})
    return wire.encode_result(packet, RESULTS, {"value": values, "flags": flags}, "toy-model")
