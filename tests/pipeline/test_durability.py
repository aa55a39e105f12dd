"""Nothing lost: exactly once across worker and sink SIGKILLs, corrupt packets never cost good ones."""

from __future__ import annotations

import threading

import msgpack
import numpy as np
import pytest
import zmq

from streamer.client import Publisher, Subscriber, wait_for
from streamer.core import wire
from streamer.core.fuzz import fuzz
from streamer.modalities.minflux import wire as mwire
from streamer.modalities.minflux.simulate import simulate
from streamer.pipeline.launcher import LocalPipeline
from streamer.pipeline.publisher import replay
from streamer.pipeline.results import load_results

SIZE = 500


@pytest.fixture(scope="module")
def rec():
    return simulate("static", 100, 1000, seed=11)  # 100,000 tuples


def _exactly_once_in_order(out, n):
    res = load_results(out, "minflux")
    idx = res["seq"] * SIZE + res["row"]
    assert len(idx) == n, f"{len(idx)} of {n} tuples persisted"
    np.testing.assert_array_equal(idx, np.arange(n))
    assert len(np.unique(res["packet_seq"])) == len(res["packet_seq"])
    return res


def _replay_in_background(rec, pipe, errors, **kw):
    def go():
        try:
            kw["sent"] = replay(rec, pipe.endpoints["ingest"], packet_size=SIZE, rate=kw.pop("rate", 200_000),
                                confirm=pipe.endpoints["results"], confirm_timeout=120)
        except BaseException as exc:  # reported by the test
            errors.append(exc)
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def _wait_released(pipe, at_least: int, timeout: float = 30, durable: bool = False) -> None:
    """Until the sink released ``at_least`` tuples (and, with ``durable``, flushed some to disk)."""
    def ok(_t, m):
        wm = m.get("streams", {}).get("replay", {}).get("watermark", 0)
        return m.get("tuples", 0) >= at_least and (wm > 0 or not durable)

    sub = Subscriber(pipe.endpoints["results"], topics=["stats"])
    try:
        assert wait_for(sub, ok, timeout) is not None
    finally:
        sub.close()


def test_sink_sigkill_and_restart_on_the_same_out_loses_and_duplicates_nothing(rec, tmp_path):
    out = tmp_path / "out"
    errors: list = []
    with LocalPipeline(2, "minflux:closed-form", out_dir=str(out)) as pipe:
        t = _replay_in_background(rec, pipe, errors, rate=40_000)
        _wait_released(pipe, 20_000, durable=True)
        pipe.restart_sink()  # SIGKILL mid-stream, new sink on the same --out
        _wait_released(pipe, 1)
        t.join(180)
        assert not t.is_alive() and not errors, errors
        summary = pipe.wait(60)
    assert summary["recovered"] > 0  # the new sink found the first one's results
    _exactly_once_in_order(out, len(rec))


def test_worker_sigkill_with_acknowledged_publisher(rec, tmp_path):
    out = tmp_path / "out"
    errors: list = []
    with LocalPipeline(2, "minflux:closed-form", out_dir=str(out)) as pipe:
        t = _replay_in_background(rec, pipe, errors)
        _wait_released(pipe, 20_000)
        pipe.kill_worker(0)
        t.join(180)
        assert not errors, errors
        pipe.wait(60)
    _exactly_once_in_order(out, len(rec))


def test_corrupt_packets_with_the_same_seq_never_cost_the_good_one(rec, tmp_path):
    """A glitching source: every good packet is preceded by corrupt ones carrying its seq."""
    n_packets = 40
    with LocalPipeline(2, "minflux:closed-form", out_dir=str(tmp_path)) as pipe:
        sub = Subscriber(pipe.endpoints["results"], topics=["stats"])
        assert wait_for(sub, lambda t, m: True, 10)
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(pipe.endpoints["ingest"])
        for seq in range(n_packets):
            good = mwire.encode_batch("scope", seq, rec.tuples[seq * SIZE:(seq + 1) * SIZE])
            msg = msgpack.unpackb(good, raw=False)
            push.send(msgpack.packb({**msg, "n": SIZE + 1}))  # bad-size
            bad = dict(msg)
            pos = np.full(len(msg["positions"]) // 4, np.nan, "<f4")  # every tuple: the packet is rejected
            bad["positions"] = pos.tobytes()
            push.send(msgpack.packb(bad))  # non-finite
            push.send(good)
            push.send(good)  # a true duplicate (same content)
        push.send(wire.encode_end("scope", n_packets, "minflux"))
        summary = pipe.wait(60)
        push.close(0)
        sub.close()
    assert summary["rejected_by_reason"] == {"bad-size": n_packets, "non-finite": n_packets}
    assert summary["duplicates"] == n_packets and summary["conflicts"] == 0
    assert summary["rejected_tuples"] == n_packets * (2 * SIZE + 1)
    assert summary["rejected_bytes"] > 0
    res = load_results(tmp_path)
    np.testing.assert_array_equal(res["seq"] * SIZE + res["row"], np.arange(n_packets * SIZE))


def test_conflicting_valid_packet_is_reported_and_kept_aside(rec, tmp_path):
    with LocalPipeline(1, "minflux:closed-form", out_dir=str(tmp_path)) as pipe:
        sub = Subscriber(pipe.endpoints["results"], topics=["stats", "error"])
        assert wait_for(sub, lambda t, m: True, 10)
        with Publisher(pipe.endpoints["ingest"], "scope") as pub:
            pub.send_batch(rec.tuples[:10])
            pub.seq = 0
            pub.send_batch(rec.tuples[10:20])  # same seq, other (valid) content
            pub.end()
        err = wait_for(sub, lambda t, m: t == "error" and m.get("reason") == "conflict", 20)
        summary = pipe.wait(30)
        sub.close()
    assert err is not None and err["seq"] == 0
    assert summary["conflicts"] == 1 and summary["tuples"] == 10
    kept = list((tmp_path / "conflicts").glob("scope-0-*.msgpack"))
    assert len(kept) == 1 and mwire.decode_packet(kept[0].read_bytes()).batch.counts[0].tolist() == \
        rec.tuples[10].counts.tolist()


def test_fuzzed_packets_interleaved_with_good_ones_on_the_same_seqs(rec, tmp_path):
    """Random bytes, truncated msgpack, wrong types/sizes, NaN/inf, huge n, unknown kind/version/modality."""
    n_good, n_fuzz = 20, 1000
    goods = [mwire.encode_batch("fuzz", s, rec.tuples[s * SIZE:(s + 1) * SIZE]) for s in range(n_good)]
    bad = list(fuzz(goods, n_fuzz, seed=5))
    expected: dict[str, int] = {}
    for _, _, why in bad:
        expected[why] = expected.get(why, 0) + 1
    with LocalPipeline(2, "minflux:closed-form", out_dir=str(tmp_path)) as pipe:
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(pipe.endpoints["ingest"])
        for s in range(n_good):  # each good packet after the bad ones that carry its seq
            for g, raw, _ in bad:
                if g == s:
                    push.send(raw)
            push.send(goods[s])
        push.send(wire.encode_end("fuzz", n_good, "minflux"))
        summary = pipe.wait(120)
        push.close(0)
        workers_alive = all(w.poll() is None for w in pipe.workers)
    assert workers_alive and summary["workers_lost"] == 0
    assert summary["tuples"] == n_good * SIZE
    assert summary["duplicates"] == expected.pop("duplicate")
    assert summary["rejected_by_reason"] == expected
    res = load_results(tmp_path)
    np.testing.assert_array_equal(res["seq"] * SIZE + res["row"], np.arange(n_good * SIZE))


def test_publisher_resends_when_the_watermark_stalls(rec, tmp_path):
    """Packets sent while no sink listened (lost in a queue that died with it) are re-sent on a stall."""
    from streamer.pipeline.launcher import LocalPipeline

    with LocalPipeline(1, "minflux:closed-form", out_dir=str(tmp_path)) as pipe:
        with Publisher(pipe.endpoints["ingest"], "stall", results=pipe.endpoints["results"],
                       resend_after_s=1.0) as pub:
            pub.send_batch(rec.tuples[:100])
            pub.seq = 5  # pretend seqs 1-4 were sent into a sink that died: the sink never saw them
            raw_missing = [mwire.encode_batch("stall", s, rec.tuples[100 * s:100 * (s + 1)]) for s in range(1, 5)]
            for s, raw in zip(range(1, 5), raw_missing):
                pub._retained[s] = raw  # what the publisher still holds for them
                pub._retained_bytes += len(raw)
            got = pub.end_confirmed(timeout=60)
        assert pub.resent >= 4 and got["streams"]["stall"]["watermark"] == 5
        summary = pipe.wait(30)
    assert summary["gaps"] == 0  # the re-sent packets filled them
    res = load_results(tmp_path)
    assert sorted(set(res["packet_seq"].tolist())) == [0, 1, 2, 3, 4]
