"""The MINFLUX view in the monitor shell, offscreen: real results over a loopback PUB, a
screenshot, load, and ``streamer monitor`` headless capture.

Run as a script this file is the paced result publisher used by the load test (a separate
process, so the GUI and the publisher do not share a GIL, as in production).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import replace

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from streamer.core import wire  # noqa: E402
from streamer.modalities.minflux import MODALITY  # noqa: E402
from streamer.modalities.minflux.predictor import FLAG_LOW_PHOTONS, PREDICTORS, load_predictor  # noqa: E402
from streamer.modalities.minflux.simulate import simulate  # noqa: E402
from streamer.modalities.minflux.wire import RESULTS, encode_batch, result_arrays  # noqa: E402


def _predictor(calibrated: bool):
    """The trained dynamic-regime model with conformal intervals when its bundle exists (after
    `streamer train`), else the closed-form estimator (no interval: the band must then be hidden)."""
    if calibrated and "dynamic" in PREDICTORS:
        try:
            return load_predictor("dynamic")
        except FileNotFoundError:
            pass
    return load_predictor("closed-form")


def _encode(packet, pred, model_id: str) -> bytes:
    return wire.encode_result(packet, RESULTS, result_arrays(packet, pred.distance, pred.lower, pred.upper,
                                                             pred.flags), model_id)


def make_results(n_traces: int, per_trace: int, packet: int, seed: int = 3, calibrated: bool = True):
    """Simulate dynamic traces, run a predictor per packet and encode the results exactly as the
    sink republishes them: [(payload, prediction, packet)] (packet: decoded, ``extra["batch"]``)."""
    rec = simulate("dynamic", n_traces, per_trace, seed)
    order = np.argsort(rec.tuples.time_s, kind="stable")  # interleave traces like a live stream
    tuples = rec.tuples[order]
    predictor = _predictor(calibrated)
    out = []
    for seq, start in enumerate(range(0, len(tuples), packet)):
        pkt = wire.decode_packet(wire.unpack(encode_batch("test", seq, tuples[start:start + packet])), MODALITY)
        pred = predictor.predict(pkt.extra["batch"])
        out.append((_encode(pkt, pred, predictor.model_id), pred, pkt))
    return out


# ------------------------------------------------------------------ publisher process (load test)

def _load_results(packet: int) -> list:
    """[(packet, prediction)] the load test cycles through (cheap: the monitor is under test)."""
    return [(pkt, pred) for _, pred, pkt in make_results(2, 2000, packet, calibrated=False)]


def _load_payload(results: list, i: int) -> bytes:
    """Message ``i`` of the load: a distinct seq and a fresh t_acq, encoded when sent (latency is measured
    from t_acq); the prediction arrays are reused, since encoding speed is not what is under test."""
    pkt, pred = results[i % len(results)]
    return _encode(replace(pkt, seq=i, t_acq=time.time()), pred, "load")


def _publisher_main(tuples_per_s: float, packet: int, seconds: float) -> None:
    """Bind an XPUB, print its port, wait for the monitor's subscription, then publish paced results."""
    import zmq

    results = _load_results(packet)
    n_msgs = int(tuples_per_s * seconds / packet)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 1000)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    if not pub.poll(10_000):  # subscription frame from the monitor
        sys.exit("no subscriber")
    pub.recv()
    time.sleep(0.05)
    period = packet / tuples_per_s
    late = worst_send = 0.0
    t0 = time.perf_counter()
    for i in range(n_msgs):
        due = t0 + i * period
        while (now := time.perf_counter()) < due:
            if due - now > 2e-3:
                time.sleep(1e-3)
        late = max(late, now - due)
        payload = _load_payload(results, i)
        pub.send_multipart([wire.TOPIC_RESULT, payload], copy=False)
        worst_send = max(worst_send, time.perf_counter() - now)
    elapsed = time.perf_counter() - t0
    pub.send_multipart([wire.TOPIC_STATS, wire.encode_stats({"tuples": n_msgs * packet, "final": True})])
    print(json.dumps({"messages": n_msgs, "tuples": n_msgs * packet, "elapsed_s": elapsed,
                      "planned_s": n_msgs * period, "max_late_s": late, "max_send_s": worst_send}), flush=True)
    time.sleep(1.0)  # let a slow monitor read what is still queued before LINGER=0 drops it
    pub.close()
    ctx.term()


if __name__ == "__main__":
    _publisher_main(float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
    sys.exit(0)


# ------------------------------------------------------------------ tests

pg = pytest.importorskip("pyqtgraph")
zmq = pytest.importorskip("zmq")

from streamer.modalities.minflux.view import BAND_BRUSH, TRACE_RGB, MinfluxView  # noqa: E402
from streamer.monitor.state import MonitorState  # noqa: E402
from streamer.monitor.subscriber import ResultSubscriber  # noqa: E402
from streamer.monitor.window import MonitorWindow  # noqa: E402


@pytest.fixture(scope="module")
def app():
    return pg.mkQApp()


@pytest.fixture
def pub_sub():
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = ResultSubscriber(f"tcp://127.0.0.1:{port}", context=ctx)
    yield pub, sub
    sub.close()
    pub.close()
    ctx.term()


def _shell(view: MinfluxView, source, **kw) -> tuple[MonitorState, MonitorWindow]:
    """The shell as ``streamer monitor`` builds it (flag names from the modality declaration)."""
    state = MonitorState(MODALITY.results.flags, modality="minflux", view=view)
    return state, MonitorWindow(state, view, source, **kw)


def _connect(pub, sub, state):
    """Slow-joiner handshake: publish stats until the subscriber sees one."""
    deadline = time.monotonic() + 5
    while not state.counters.pipeline:
        assert time.monotonic() < deadline, "subscriber never connected"
        pub.send_multipart([wire.TOPIC_STATS, wire.encode_stats({"rate_tuples_s": 0.0, "tuples": 0})])
        time.sleep(0.01)
        sub.drain(state, 0.01)


def _pixels(image) -> np.ndarray:
    """QImage -> (h, w, 4) uint8 array (B, G, R, A on little-endian)."""
    image = image.convertToFormat(image.Format.Format_ARGB32)
    buf = np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes()).copy()  # copy while image lives
    return buf.reshape(image.height(), image.bytesPerLine() // 4, 4)[:, : image.width()]


def _has_colour(px: np.ndarray, rgb, tol=40) -> int:
    bgr = np.array(rgb[::-1], np.int16)
    return int((np.abs(px[..., :3].astype(np.int16) - bgr).max(axis=-1) < tol).sum())


def _dispose(app, win):
    win.close()
    win.deleteLater()
    app.processEvents()


def test_monitor_shows_real_results_and_screenshot(app, pub_sub, tmp_path):
    pub, sub = pub_sub
    results = make_results(n_traces=3, per_trace=3000, packet=250)
    view = MinfluxView(capacity=20_000, window=20_000, max_points=1500)
    state, win = _shell(view, sub)
    win.resize(1280, 760)
    win.show()
    _connect(pub, sub, state)
    for payload, _, _ in results:
        pub.send_multipart([wire.TOPIC_RESULT, payload])
    pub.send_multipart([wire.TOPIC_ERROR, wire.encode_error("bad-size", "counts: 10 bytes", stream="x", seq=3)])
    pub.send_multipart([wire.TOPIC_STATS, wire.encode_stats(
        {"rate_tuples_s": 123456.0, "tuples": 9000, "gaps": 0, "rejected": 1, "latency_ms": {"p50": 1.5, "p99": 3.2}})])
    total = sum(p.n for _, _, p in results)
    deadline = time.monotonic() + 10
    while (state.counters.items < total or state.counters.rejected < 1
           or state.counters.pipeline.get("items") != 9000) and time.monotonic() < deadline:
        win.tick()
        app.processEvents()
    win.redraw(force=True)
    app.processEvents()

    c = state.counters
    assert c.items == total and c.messages == len(results) and c.missed_messages == 0
    assert c.rejected == 1 and "bad-size" in c.last_error and c.pipeline["items/s"] == 123456.0
    dist = np.concatenate([pred.distance for _, pred, _ in results])
    lower = np.concatenate([pred.lower for _, pred, _ in results])
    all_flags = np.concatenate([pred.flags for _, pred, _ in results])
    flagged = (all_flags & FLAG_LOW_PHOTONS) != 0
    # the shell counts flags by the names the modality declares
    assert c.flag_counts["low photons"] == int(flagged.sum())
    assert set(c.flag_counts) == set(MODALITY.results.flags.values())
    shown = np.where(flagged, np.nan, dist)  # low-photon tuples are counted, not drawn
    x, y = view.distance_curve.getData()
    k = -(-total // 1500)
    assert len(y) == total // k
    with warnings.catch_warnings():  # all-flagged bins are NaN (gaps), as the monitor draws them
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmean(shown[total - len(y) * k:].reshape(-1, k), axis=1)
    np.testing.assert_allclose(y, expected, rtol=1e-4)
    edges, counts = view.hist_curve.getData()
    assert counts.sum() == np.isfinite(shown).sum() and len(edges) == len(counts) + 1
    has_interval = bool(np.isfinite(lower).any())
    assert view.band.isVisible() == has_interval
    status = win.status.text()
    assert f"{total:,} items" in status and "rejected   : 1 malformed" in status and "low photons" in status
    assert "view: all traces" in view.info.text() and "(low photons, not 2-on: counted, not drawn)" in view.info.text()

    trace = int(results[0][2].extra["batch"].trace_id[0])
    view.select_trace(trace)
    win.redraw(force=True)
    x_t, _ = view.distance_curve.getData()
    n_trace = sum(int((p.extra["batch"].trace_id == trace).sum()) for _, _, p in results)
    assert len(x_t) == n_trace // -(-n_trace // 1500)
    assert x_t[0] >= 0 and np.all(np.diff(x_t) > 0)  # acquisition time axis of one trace
    assert "acquisition time" in view.trace_plot.getAxis("bottom").labelText
    assert f"view: trace {trace}" in view.info.text()
    assert view.trace_box.currentText() == f"trace {trace}"
    view.select_trace(None)
    win.redraw(force=True)
    app.processEvents()

    path = tmp_path / "monitor.png"
    image = win.grab()
    assert image.save(str(path)) and path.stat().st_size > 20_000
    px = _pixels(image.toImage())
    assert len(np.unique(px[..., :3].reshape(-1, 3), axis=0)) > 50  # not a blank/flat image
    assert _has_colour(px, TRACE_RGB) > 2000  # the distance trace and histogram are drawn
    if has_interval:
        band_on_black = tuple(round(c * BAND_BRUSH[3] / 255) for c in BAND_BRUSH[:3])  # blended on black
        assert _has_colour(px, band_on_black, tol=12) > 5000  # the interval band is filled
    if os.environ.get("MONITOR_SCREENSHOT"):  # keep a copy to look at
        image.save(os.environ["MONITOR_SCREENSHOT"])
    _dispose(app, win)


class _SlowSource:
    """A GUI that is slow to paint (e.g. a remote X display): every frame costs ``delay_s`` more."""

    def __init__(self, sub, delay_s):
        self.sub, self.delay_s = sub, delay_s

    def drain(self, state, budget_s):
        time.sleep(self.delay_s)
        return self.sub.drain(state, budget_s)


def _run_load(app, tuples_per_s, packet, seconds, slow_frame_s=0.0, rcvhwm=1000):
    proc = subprocess.Popen([sys.executable, __file__, str(tuples_per_s), str(packet), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        view = MinfluxView(capacity=100_000)
        sub = ResultSubscriber(f"tcp://127.0.0.1:{port}", rcvhwm=rcvhwm)
        state, win = _shell(view, _SlowSource(sub, slow_frame_s) if slow_frame_s else sub, frame_ms=33)
        win.resize(1000, 600)
        win.show()
        win.start()
        deadline = time.monotonic() + seconds + 15
        while proc.poll() is None and time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.001)
        report = json.loads(proc.stdout.read().strip().splitlines()[-1])
        for _ in range(10):  # let the monitor read what is still queued
            win.tick()
        win.timer.stop()
        frames = np.array(win.frame_times)
        intervals = np.array(win.frame_intervals)
        _dispose(app, win)
        sub.close()
        return report, state, view, frames, intervals
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


#: result messages/s the publisher process must be able to encode for the load test to mean something:
#: 2x the 10,000 messages/s of its slow-GUI case, as the publisher shares 2 cores with the GUI (a
#: machine that cannot publish the load cannot show whether the monitor holds the publisher up;
#: measured 2026-11-30 on a VM ~3.3x slower than usual: 7,700-13,300/s, and both cases failed there)
LOAD_ENCODE_RATE = 20_000


@pytest.fixture(scope="module")
def encode_rate() -> float:
    """Result messages/s this machine encodes, with the publisher's own per-message work."""
    results = _load_results(30)
    n = 2000
    t0 = time.perf_counter()
    for i in range(n):
        _load_payload(results, i)
    return n / (time.perf_counter() - t0)


@pytest.mark.parametrize("packet,slow_frame_s", [(100, 0.0), (30, 0.1)], ids=["normal-gui", "slow-gui"])
def test_monitor_at_300k_tuples_per_s_never_holds_up_the_publisher(app, packet, slow_frame_s, encode_rate):
    """300k tuples/s: 3000 messages/s to a normal GUI, 10000 messages/s to a GUI that needs 100 ms
    extra per frame. The publisher stays on schedule, GUI frames stay bounded, memory stays in the
    rings; the slow GUI drops display messages but still shows fresh data."""
    if encode_rate < LOAD_ENCODE_RATE:
        pytest.skip(f"this machine encodes {encode_rate:,.0f} result messages/s; the 300k tuples/s load "
                    f"needs >= {LOAD_ENCODE_RATE:,} to be published on schedule at all")
    report, state, view, frames, intervals = _run_load(app, 300_000, packet, 1.5, slow_frame_s=slow_frame_s)
    label = f"packet {packet}, slow {slow_frame_s}"
    print(label, report, "tick ms p50/p95/max", np.percentile(frames, [50, 95, 100]) * 1e3,
          "interval ms p50/p95", np.percentile(intervals, [50, 95]) * 1e3, state.counters)
    # publisher on schedule: PUB never blocks on a slow subscriber
    assert report["elapsed_s"] < report["planned_s"] + 0.25, (label, report)
    assert report["max_send_s"] < 0.05, (label, report)
    assert len(view.model.ring) <= view.model.ring.capacity
    c = state.refresh_counters()
    sent = report["messages"]
    assert c.items > 0 and c.items == view.model.tuples and len(frames) > 5, label
    # the newest data reaches the screen: a seq near the end was shown
    assert state.last_seq("test") >= 0.9 * sent, (label, state.last_seq("test"), sent)
    # tick = drain (budget 12 ms) + redraw (+ the injected slowness); interval adds painting
    assert np.percentile(frames, 95) < 0.012 + slow_frame_s + 0.08, (label, np.percentile(frames, [50, 95, 100]))
    assert np.median(intervals) < 0.25 + slow_frame_s, (label, np.percentile(intervals, [50, 95, 100]))
    # display lag (acquisition -> newest result on screen) stays bounded: a slow GUI can fall behind by
    # at most what ZeroMQ's queues hold (high-water marks, fixed receive buffer), not by ever more
    assert c.latency_ms["p50"] < (250 if not slow_frame_s else 600 + 1e3 * slow_frame_s), (label, c.latency_ms)
    # every result between the first and the newest shown is either shown or counted as not shown
    assert c.messages + c.missed_messages == state.last_seq("test") - state.first_seq("test") + 1
    assert c.duplicate_messages == 0
    if slow_frame_s:
        assert c.missed_messages > 0.1 * sent, (label, c.missed_messages, sent)
    else:  # a normal GUI shows a good part of 3000 messages/s even on a busy 2-core machine
        assert c.messages >= 0.3 * sent, (label, c.messages, sent)


def test_monitor_command_headless_capture(tmp_path):
    """`streamer monitor --duration --screenshot` (MINFLUX, the default modality) against a loopback
    PUB carrying real results."""
    results = make_results(n_traces=2, per_trace=2000, packet=100, calibrated=False)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    shot = tmp_path / "cli.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "monitor", "--address", f"tcp://127.0.0.1:{port}",
                             "--duration", "2.5", "--screenshot", str(shot), "--size", "900x600"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert "subscribed" in proc.stdout.readline()
        deadline = time.monotonic() + 20
        i = 0
        while proc.poll() is None and time.monotonic() < deadline:  # keep publishing until it closes
            _, pred, pkt = results[i % len(results)]
            pub.send_multipart([wire.TOPIC_RESULT, _encode(replace(pkt, seq=i), pred, "cf")])
            i += 1
            time.sleep(0.005)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pub.close()
        ctx.term()
    assert proc.returncode == 0, out
    summary = next(ln for ln in out.splitlines() if ln.startswith("monitor:"))
    shown = int(summary.split()[1].replace(",", ""))
    assert 0 < shown <= i * 100 and shot.stat().st_size > 10_000, summary
