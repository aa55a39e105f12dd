"""``streamer monitor [--modality NAME]``: live pyqtgraph view of the results a sink republishes on PUB.

Generic: the shell (:mod:`streamer.monitor`: subscription, drain budget, rates/lag/errors/flags
panel) hosts the view of the watched modality, ``registry.get(NAME).view(**options)``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from ..pipeline.defaults import DEFAULT_RESULTS as DEFAULT_ADDRESS

HELP = ("live monitor (pyqtgraph) of one modality's results: its view (MINFLUX: distance trace with 90% "
        "interval band, histogram) plus rates, display lag, errors, flags")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=DEFAULT_ADDRESS,
                   help=f"the sink's PUB address to subscribe to (default {DEFAULT_ADDRESS})")
    p.add_argument("--fps", type=float, default=20.0, help="GUI frames per second (default 20)")
    p.add_argument("--drain-budget-ms", type=float, default=12.0,
                   help="max time per frame spent reading messages; the rest is dropped by ZeroMQ (default 12)")
    p.add_argument("--rcvhwm", type=int, default=1000, help="receive high-water mark in messages (default 1000)")
    # view options: passed to the modality's view, which ignores those it does not use
    p.add_argument("--capacity", type=int, default=200_000, help="items kept in memory by the view (default 200000)")
    p.add_argument("--window", type=int, default=50_000, help="items shown initially (default 50000)")
    p.add_argument("--max-points", type=int, default=1000, help="points drawn per curve (bin means; default 1000)")
    p.add_argument("--trace", type=int, default=None, help="MINFLUX: start with this trace id selected")
    p.add_argument("--show-flagged", action="store_true",
                   help="MINFLUX: also draw tuples flagged low-photons (background-only / bleached); "
                        "they are always counted")
    p.add_argument("--duration", type=float, default=None, help="close after this many seconds")
    p.add_argument("--screenshot", default=None,
                   help="save a PNG of the window when closing (with --duration: headless capture)")
    p.add_argument("--size", default="1280x760", help="window size WxH (default 1280x760)")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like 1280x760, got {text!r}") from None
    if w < 200 or h < 150:
        raise ValueError(f"--size too small: {text}")
    return w, h


def run(args: argparse.Namespace) -> int:
    if args.fps <= 0 or args.drain_budget_ms <= 0:
        raise ValueError("--fps and --drain-budget-ms must be > 0")
    if args.capacity < 100 or args.window < 100:
        raise ValueError("--capacity and --window must be >= 100 items")
    from ..core import registry

    name = getattr(args, "modality", None) or registry.DEFAULT_MODALITY
    modality = registry.get(name)  # ValueError listing the installed ones
    if modality.view is None:
        raise ValueError(f"modality {name!r} has no monitor view")
    width, height = _size(args.size)
    if args.screenshot and args.duration is None:
        raise ValueError("--screenshot needs --duration (how long to collect data before the capture)")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        if "QT_QPA_PLATFORM" not in os.environ:  # headless: still runs, e.g. for --screenshot
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
            print("no display: running offscreen (use --duration/--screenshot, or Ctrl-C to stop)", flush=True)

    import pyqtgraph as pg  # Qt only for this command
    import zmq

    from ..monitor.state import MonitorState
    from ..monitor.subscriber import ResultSubscriber
    from ..monitor.window import MonitorWindow, check_qt_binding

    try:
        check_qt_binding()
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None
    app = pg.mkQApp("streamer monitor")
    view = modality.view(capacity=args.capacity, window=min(args.window, args.capacity), max_points=args.max_points,
                         trace=args.trace, show_flagged=args.show_flagged)
    state = MonitorState(modality.results.flags, modality=name, view=view,
                         detection_noun=modality.results.detection_noun)
    try:
        subscriber = ResultSubscriber(args.address, rcvhwm=args.rcvhwm)
    except zmq.ZMQError as exc:
        raise ValueError(f"cannot subscribe to {args.address!r}: {exc}") from None
    window = MonitorWindow(state, view, subscriber, frame_ms=max(1, int(1000 / args.fps)),
                           drain_budget_s=args.drain_budget_ms / 1e3,
                           title=f"{getattr(view, 'title', modality.title)} monitor - {args.address}")
    window.resize(width, height)
    window.show()
    window.start()
    started = time.monotonic()

    def finish() -> None:
        if args.screenshot:  # capture while the window is still shown
            window.redraw(force=True)
            app.processEvents()
            if not window.grab().save(args.screenshot):
                print(f"could not write {args.screenshot}", file=sys.stderr)
            else:
                print(f"saved screenshot to {args.screenshot}")
        window.close()

    if args.duration is not None:
        pg.QtCore.QTimer.singleShot(int(args.duration * 1000), finish)
    # Qt's loop does not return to Python for SIGINT; the frame timer runs Python often enough
    old_handler = signal.signal(signal.SIGINT, lambda *_: window.close())
    print(f"monitor subscribed to {args.address}; close the window (or Ctrl-C) to quit", flush=True)
    try:
        app.exec()
    finally:
        window.timer.stop()
        subscriber.close()
        signal.signal(signal.SIGINT, old_handler)
    c = state.counters
    frames = sorted(window.frame_times)
    p99 = frames[int(0.99 * (len(frames) - 1))] * 1e3 if frames else float("nan")
    print(f"monitor: {c.items:,} items in {c.messages:,} messages over {time.monotonic() - started:.1f} s; "
          f"{c.missed_messages:,} messages not shown; GUI frame p99 {p99:.1f} ms")
    return 0
