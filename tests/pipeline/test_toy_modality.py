"""The seam is real: a modality defined only here runs through sink + 2 workers + writer + monitor shell."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streamer.client import Publisher, Subscriber, wait_for
from streamer.core import registry
from streamer.pipeline.launcher import LocalPipeline, _cli
from streamer.pipeline.results import load_results

HERE = Path(__file__).resolve().parent


@pytest.fixture()
def toy(monkeypatch):
    """Register the toy plug-in for this process and the pipeline's subprocesses."""
    monkeypatch.setenv(registry.ENV, "toy_modality:MODALITY")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(HERE))
    registry.reset()
    yield __import__("toy_modality")
    registry.reset()


def test_toy_modality_end_to_end_through_two_workers_writer_and_monitor_shell(toy, tmp_path):
    from streamer.monitor.state import MonitorState
    from streamer.monitor.subscriber import ResultSubscriber
    from streamer.pipeline.publisher import replay

    rec = toy.simulate(3000, 64, seed=1)
    out = tmp_path / "out"
    with LocalPipeline(2, "toy:sum", out_dir=str(out)) as pipe:
        view = registry.get("toy").view()
        state = MonitorState.for_modality("toy", view)
        sub = ResultSubscriber(pipe.endpoints["results"])
        deadline = time.monotonic() + 20
        while state.counters.pipeline == {} and time.monotonic() < deadline:  # the SUB is live
            sub.drain(state, 0.05)
        replay(rec, pipe.endpoints["ingest"], stream="toy-1", packet_size=128, confirm=pipe.endpoints["results"])
        summary = pipe.wait(60)
        while sub.drain(state, 0.05):
            pass
        sub.close()
    assert summary["tuples"] == 3000 and summary["rejected"] == 0 and summary["gaps"] == 0
    assert summary["items_by_modality"] == {"toy": 3000}
    res = load_results(out)  # the only modality in the directory
    v = rec.arrays["values"].astype(np.float32)
    # per item: every spectrum once, in order, equal to a direct computation
    np.testing.assert_array_equal(res["spectrum_id"], np.arange(3000))
    np.testing.assert_array_equal(res["peak"], v.argmax(axis=1))
    np.testing.assert_allclose(res["total"], v.sum(axis=1), rtol=1e-6)
    # per detection: the table carries its item and packet, and matches a direct computation
    item, channel = np.nonzero(v > 10)
    np.testing.assert_array_equal(res["det_seq"] * 128 + res["det_item"], item)
    np.testing.assert_array_equal(res["det_channel"], channel)
    np.testing.assert_array_equal(res["det_height"], v[item, channel])
    assert set(res["packet_model"]) == {"toy-sum-v1"}
    # the monitor shell counted every result message and handed them to the toy's view
    state.refresh_counters()
    c = state.counters
    assert c.messages == 24 and c.missed_messages == 0
    np.testing.assert_allclose(np.concatenate(view.totals), v.sum(axis=1), rtol=1e-6)
    assert view.detections == len(item)


def test_toy_rejections_use_its_own_reasons_and_lose_nothing_else(toy, tmp_path):
    rec = toy.simulate(200, 16, seed=2)
    with LocalPipeline(2, "toy:sum", out_dir=str(tmp_path)) as pipe:
        sub = Subscriber(pipe.endpoints["results"], topics=["error", "stats"])
        with Publisher(pipe.endpoints["ingest"], "toy-1", modality="toy") as pub:
            pub.send(values=rec.arrays["values"][:100], k=16)
            pub.send(values=np.zeros((2, 2000), np.uint16), k=2000)  # the toy's own rule
            pub.send(values=np.zeros((2, 8), np.float32), k=16)  # wrong size for k
            pub.send(values=np.full((2, 16), np.nan, np.float32), k=16)  # declared finite
            pub.send(values=rec.arrays["values"][100:], k=16)
            got = pub.end_confirmed(pipe.endpoints["results"], timeout=60, subscriber=sub)
        sub.close()
        summary = pipe.wait(60)
    assert got["rejected_by_reason"] == {"toy-too-wide": 1, "bad-size": 1, "non-finite": 1}
    assert summary["tuples"] == 200
    res = load_results(tmp_path, "toy")
    np.testing.assert_array_equal(res["peak"], rec.truth["peak"])


def test_packets_of_an_unserved_modality_are_held_and_reported(toy, tmp_path):
    """Workers announce what they serve; MINFLUX packets wait (reported) until a MINFLUX worker comes."""
    from streamer.modalities.minflux.simulate import simulate

    batch = simulate("static", 2, 10, seed=3).tuples
    with LocalPipeline(1, "toy:sum", out_dir=str(tmp_path), exit_after_end=2) as pipe:
        sub = Subscriber(pipe.endpoints["results"], topics=["error", "stats"])
        with Publisher(pipe.endpoints["ingest"], "scope", modality="minflux") as mpub, \
                Publisher(pipe.endpoints["ingest"], "toy-1", modality="toy") as tpub:
            mpub.send_batch(batch)
            notice = wait_for(sub, lambda t, m: t == "error" and m.get("reason") == "no-worker", 20)
            assert notice is not None and notice["modality"] == "minflux"
            st = wait_for(sub, lambda t, m: t == "stats" and m.get("unserved"), 10)
            assert st["unserved"] == {"minflux": 1} and st["served"] == ["toy"]
            tpub.send(values=np.ones((3, 4), np.uint16), k=4)  # the toy stream is not blocked
            tpub.end()
            # a worker serving MINFLUX arrives: the held packet is processed, nothing was lost
            extra = subprocess.Popen(_cli("worker", "--work", pipe.endpoints["work"], "--predictor", "minflux:closed-form",
                                          "--parent-pid", str(os.getpid())), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            pipe.workers.append(extra)
            mpub.end()
        sub.close()
        summary = pipe.wait(60)
    assert summary["items_by_modality"] == {"minflux": 20, "toy": 3} and summary["rejected"] == 0
    assert len(load_results(tmp_path, "minflux")["distance"]) == 20


def test_unknown_modality_is_rejected_at_the_sink(toy, tmp_path):
    with LocalPipeline(1, "toy:sum") as pipe:
        sub = Subscriber(pipe.endpoints["results"], topics=["error", "stats"])
        with Publisher(pipe.endpoints["ingest"], "x", modality="no-such-thing", kind="frames") as pub:
            pub.send(frames=np.zeros((1, 2), np.uint16))
            got = pub.end_confirmed(pipe.endpoints["results"], timeout=30, subscriber=sub)
        sub.close()
    assert got["rejected_by_reason"] == {"unknown-modality": 1}


def test_cli_lists_the_plug_in(toy):
    env = {**os.environ}
    out = subprocess.run([sys.executable, "-m", "streamer.cli", "modalities", "toy", "--markdown"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "`values` | <u2 or <f4 (n, k)" in out.stdout and "toy-too-wide" in out.stdout
