"""The shell's Qt-free counters, with a toy modality and view: nothing here knows MINFLUX."""

import ast
from pathlib import Path

import numpy as np
import pytest

import monitor_toy as toy
from streamer.core import registry, wire
from streamer.monitor.state import MonitorState, stats_summary


def _decoded(seq, values, **kw):
    return wire.decode_message(toy.result(seq, values, **kw))


def test_monitor_package_imports_no_modality():
    root = Path(__file__).resolve().parents[2] / "streamer" / "monitor"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any("modalities" in n for n in names), (path.name, names)


def test_counters_seq_gaps_rate_latency_errors():
    now = [100.0]
    view = toy.ToyView()
    state = MonitorState(toy.RESULTS.flags, modality="toy-monitor", view=view, clock=lambda: now[0],
                         rate_window_s=2.0)
    for seq in (0, 1, 2, 5, 6, 6, 9):  # 3,4,7,8 missed; one duplicate
        state.note_message(seq, "m1")
    state.note_message(0, "m1", stream="other")  # another stream has its own sequence
    c = state.counters
    assert c.missed_messages == 4 and c.duplicate_messages == 1 and c.messages == 8
    assert state.first_seq("") == 0 and state.last_seq("") == 9 and state.last_seq("nope") is None
    for i in range(4):
        state.ingest_results([_decoded(i, np.ones(50))], lag_s=0.002 + 0.002 * (i % 2))
        now[0] += 0.5
    c = state.refresh_counters()
    assert c.items == 200 and c.rate == pytest.approx(200 / 2.0)
    assert c.latency_ms["p50"] == pytest.approx(3.0)
    assert len(view.blocks) == 4 and view.values().sum() == 200
    assert c.model_ids == ("m1", "toy-model")
    now[0] += 10
    assert state.refresh_counters().rate == 0.0


def test_flags_are_counted_by_the_modality_names():
    state = MonitorState({1: "odd", 4: "big"}, modality="toy-monitor")
    state.ingest_results([_decoded(0, [1, 2, 300, 400]), _decoded(1, [500])])
    assert state.counters.flag_counts == {"odd": 2, "big": 3}
    assert state.counters.items == 5
    no_flags = MonitorState({}, modality="toy-monitor")  # a modality without flags: nothing to count
    no_flags.ingest_results([_decoded(0, [1, 2])])
    assert no_flags.counters.flag_counts == {} and no_flags.counters.items == 2


def test_other_modalities_are_counted_not_shown():
    view = toy.ToyView()
    state = MonitorState(toy.RESULTS.flags, modality="toy-monitor", view=view)
    state.ingest_results([_decoded(0, [1, 2], stream="a"), _decoded(0, [3, 4, 5], stream="b", modality="other"),
                          _decoded(1, [6], stream="a")])
    c = state.counters
    assert c.messages == 3 and c.other_messages == 1 and c.items == 3
    assert len(view.blocks) == 1 and [r["seq"] for r in view.blocks[0]] == [0, 1]
    np.testing.assert_array_equal(view.values(), [1, 2, 6])
    everything = MonitorState(modality=None, view=toy.ToyView())  # None: show every modality
    everything.ingest_results([_decoded(0, [1]), _decoded(1, [2], modality="other")])
    assert everything.counters.items == 2 and everything.counters.other_messages == 0


def test_errors_by_reason_notices_and_stats():
    state = MonitorState()
    state.note_error(wire.unpack(wire.encode_error("bad-size", "counts: 10 bytes", stream="x", seq=3)))
    state.note_error(wire.unpack(wire.encode_error("bad-size", "again")))
    state.note_error(wire.unpack(wire.encode_error("no-worker", "no live worker serves 'electron'")))
    state.note_error("non-finite: t_acq")
    c = state.counters
    assert c.errors_by_reason == {"bad-size": 2, "no-worker": 1, "non-finite": 1}
    assert c.rejected == 3  # the no-worker notice rejects nothing
    assert c.last_error.startswith("non-finite")
    state.note_stats(wire.unpack(wire.encode_stats({
        "rate_tuples_s": 1234.5, "tuples": 9000, "gaps": 1, "rejected": 3, "workers": 2, "final": False,
        "latency_ms": {"p50": 1.5, "p99": 3.25}, "unserved": {"electron": 7, "smlm3d": 0}, "served": None})))
    p = state.counters.pipeline
    assert p["items/s"] == 1234.5 and p["items"] == 9000 and p["latency p99 ms"] == 3.25
    assert p["unserved"] == {"electron": 7} and "final" not in p
    assert stats_summary({"rate_tuples_s": "fast", "latency_ms": 3}) == {}


def test_state_for_an_installed_modality_uses_its_flag_names(monkeypatch):
    monkeypatch.setitem(registry._loaded, "toy-monitor", toy.MODALITY)  # registered for this test only
    view = registry.get("toy-monitor").view(capacity=10, unknown_option=1)
    state = MonitorState.for_modality("toy-monitor", view)
    assert state.flags == {1: "odd", 4: "big"} and state.modality == "toy-monitor" and state.view is view
    with pytest.raises(ValueError, match="unknown modality"):
        MonitorState.for_modality("no-such-modality")
