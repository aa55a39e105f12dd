"""The manifest writer: the JSON json.dumps(indent=2) would write, lists of numbers kept on one line."""

from __future__ import annotations

import json

import pytest

from streamer.core import model_bundle


@pytest.mark.parametrize("obj", [
    {}, [], 3.5, "x", None,
    {"a": [], "b": {}, "c": [1, 2.5, "s", None, True]},
    {"cells": [{"q_bins": [1.25, 2.0], "n": 3}, {"pooled": True}], "nested": [[1, 2], [3]]},
    {"nan": float("nan"), "inf": [float("inf")], "unicode": "µm"},
])
def test_dumps_reads_back_as_json(obj):
    text = model_bundle.dumps(obj)
    back = json.loads(text)
    assert json.dumps(back, sort_keys=True) == json.dumps(obj, sort_keys=True)


def test_dumps_keeps_numeric_lists_on_one_line(tmp_path):
    manifest = {"regime": "r", "calibration": {"cells": [{"q_bins": list(range(40))}] * 3}, "_dir": "left out"}
    model_bundle.write_manifest(tmp_path, manifest)
    text = (tmp_path / model_bundle.MANIFEST).read_text()
    assert json.loads(text) == {k: v for k, v in manifest.items() if k != "_dir"}
    assert text.count("\n") < 20  # json.dumps(indent=2) takes a line per number: > 120
    assert '"q_bins": [0, 1, 2,' in text
