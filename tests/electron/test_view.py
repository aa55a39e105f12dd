"""Monitor view: headless model, and the widget under the offscreen Qt platform."""

import numpy as np
import pytest

from streamer.modalities.electron.view import ElectronView, ElectronViewModel


def _results():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 99, 500).astype(np.float32)
    y = rng.uniform(0, 99, 500).astype(np.float32)
    s = rng.exponential(0.2, 500).astype(np.float32)
    return [{"n": 50, "m": 500, "x": x, "y": y, "score": s, "modality": "electron"}], s


def test_counted_image_and_knob():
    m = ElectronViewModel(upsample=4)
    res, s = _results()
    m.ingest_results(res)
    assert m.image.sum() == 500 and m.image.shape[0] <= 400 and m.frames == 50
    m.set_knob(float(np.median(s)))
    assert abs(m.image.sum() - 250) <= 1
    frac, mean, cut = m.knob_curve(10)
    assert frac[-1] == 1.0 and np.all(np.diff(mean) >= 0)


def test_widget_offscreen():
    pytest.importorskip("pyqtgraph")
    from pyqtgraph.Qt import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    v = ElectronView()
    res, _ = _results()
    v.ingest(res)
    v.widget()
    v.refresh()
    assert "500" in v.info.text()
    app.processEvents()
