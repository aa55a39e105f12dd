"""The shell window, offscreen, hosting a toy modality's view: drain -> state -> view, status panel,
and the generic ``streamer monitor`` command (headless capture)."""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import monitor_toy as toy  # noqa: E402
from streamer.core import registry, wire  # noqa: E402
from streamer.monitor.state import MonitorState  # noqa: E402

pg = pytest.importorskip("pyqtgraph")
zmq = pytest.importorskip("zmq")

from streamer.monitor.subscriber import ResultSubscriber  # noqa: E402
from streamer.monitor.window import MonitorWindow, format_counters  # noqa: E402


@pytest.fixture(scope="module")
def app():
    return pg.mkQApp()


@pytest.fixture
def toy_installed(monkeypatch):
    monkeypatch.setitem(registry._loaded, toy.MODALITY.name, toy.MODALITY)


def test_shell_hosts_the_view_and_shows_the_panel(app):
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind("inproc://shell")
    sub = ResultSubscriber("inproc://shell", context=ctx)
    view = toy.ToyView()
    state = MonitorState(toy.RESULTS.flags, modality="toy-monitor")
    win = MonitorWindow(state, view, sub, frame_ms=10)
    try:
        assert state.view is view and win.host is view.label and "toy values" in win.windowTitle()
        win.resize(600, 400)
        win.show()
        deadline = time.monotonic() + 5
        while not state.counters.pipeline:
            assert time.monotonic() < deadline
            pub.send_multipart([wire.TOPIC_STATS, wire.encode_stats({"tuples": 0, "unserved": {"toy-monitor": 3}})])
            time.sleep(0.01)
            win.tick()
        for seq in (0, 1, 3):  # seq 2 never arrives: one message not shown
            pub.send_multipart([wire.TOPIC_RESULT, toy.result(seq, [1, 2, 300])])
        pub.send_multipart([wire.TOPIC_ERROR, wire.encode_error("bad-size", "value: 3 bytes", stream="s", seq=9)])
        pub.send_multipart([wire.TOPIC_ERROR, wire.encode_error("no-worker", "none serves toy")])
        deadline = time.monotonic() + 5
        while (state.counters.items < 9 or len(state.counters.errors_by_reason) < 2) and time.monotonic() < deadline:
            win.tick()
            app.processEvents()
        win.redraw(force=True)
        assert view.refreshes >= 2 and view.label.text() == "toy: 9 values"
        text = win.status.text()
        assert "9 items in 3 result messages" in text and "[toy-monitor]" in text
        assert "1 result messages skipped" in text
        assert "rejected   : 1 malformed packets (bad-size 1)" in text and "notices: no-worker 1" in text
        assert "odd 3  big 3" in text and "unserved {toy-monitor: 3}" in text and "toy-model" in text
        assert len(win.frame_times) > 1
    finally:
        win.close()
        sub.close()
        pub.close()
        ctx.term()


def test_format_counters_before_anything_arrived():
    text = format_counters(MonitorState().refresh_counters())
    assert "0 items in 0 result messages" in text and "rejected   : 0" in text and "flags" not in text


def _args(**kw) -> argparse.Namespace:
    from streamer.commands import monitor

    p = argparse.ArgumentParser()
    monitor.add_arguments(p)
    args = p.parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_monitor_command_runs_any_modality_headless(app, toy_installed, tmp_path, capsys, monkeypatch):
    """`streamer monitor --modality toy-monitor --duration --screenshot` in this process."""
    from streamer.commands import monitor

    made = []
    monkeypatch.setattr(toy.MODALITY, "view", lambda **options: made.append(toy.ToyView(**options)) or made[-1])
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def publish():
        seq = 0
        while not stop.is_set():
            pub.send_multipart([wire.TOPIC_RESULT, toy.result(seq, np.arange(5))])
            seq += 1
            time.sleep(0.005)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    shot = tmp_path / "toy.png"
    try:
        rc = monitor.run(_args(modality="toy-monitor", address=f"tcp://127.0.0.1:{port}", duration=1.5,
                               screenshot=str(shot), size="640x400", trace=3))
    finally:
        stop.set()
        thread.join()
        pub.close()
        ctx.term()
    out = capsys.readouterr().out
    assert rc == 0 and shot.stat().st_size > 1000, out
    summary = next(ln for ln in out.splitlines() if ln.startswith("monitor:"))
    assert int(summary.split()[1].replace(",", "")) > 0
    assert made and made[0].options["trace"] == 3 and made[0].options["capacity"] == 200_000
    assert len(made[0].values()) > 0


def test_monitor_command_rejects_unknown_modality_and_viewless(toy_installed, monkeypatch):
    from streamer.commands import monitor

    with pytest.raises(ValueError, match="unknown modality 'nope'"):
        monitor.run(_args(modality="nope"))
    monkeypatch.setattr(toy.MODALITY, "view", None)
    with pytest.raises(ValueError, match="has no monitor view"):
        monitor.run(_args(modality="toy-monitor"))


def test_monitor_command_rejects_bad_options(capsys):
    from streamer.cli import main

    assert main(["monitor", "--screenshot", "x.png"]) == 2
    assert "--screenshot needs --duration" in capsys.readouterr().err
    assert main(["monitor", "--size", "12x9", "--duration", "1"]) == 2
    assert "--size too small" in capsys.readouterr().err
    assert main(["monitor", "--address", "nowhere", "--duration", "1"]) == 2
    assert "cannot subscribe to 'nowhere'" in capsys.readouterr().err
