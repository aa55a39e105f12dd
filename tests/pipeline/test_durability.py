"""Nothing lost: exactly once across worker and sink SIGKILLs, corrupt packets never cost good ones."""

from __future__ import annotations

import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from streamer.client import Publisher, Subscriber, wait_for
from streamer.core import wire
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
            pos = np.frombuffer(msg["positions"], "<f4").copy()
            pos[5] = np.nan
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
    rng = np.random.default_rng(5)
    n_good, n_fuzz = 20, 1000
    goods = [mwire.encode_batch("fuzz", s, rec.tuples[s * SIZE:(s + 1) * SIZE]) for s in range(n_good)]
    fuzz, expected = _fuzz(goods, n_fuzz, rng)
    with LocalPipeline(2, "minflux:closed-form", out_dir=str(tmp_path)) as pipe:
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(pipe.endpoints["ingest"])
        per = n_fuzz // n_good
        for s in range(n_good):
            for raw in fuzz[s * per:(s + 1) * per]:
                push.send(raw)
            push.send(goods[s])
        push.send(wire.encode_end("fuzz", n_good, "minflux"))
        summary = pipe.wait(120)
        push.close(0)
        workers_alive = all(w.poll() is None for w in pipe.workers)
    assert workers_alive and summary["workers_lost"] == 0
    assert summary["tuples"] == n_good * SIZE
    assert summary["rejected"] + summary["duplicates"] == n_fuzz
    assert summary["rejected_by_reason"] == {k: v for k, v in expected.items() if k != "duplicate"}
    res = load_results(tmp_path)
    np.testing.assert_array_equal(res["seq"] * SIZE + res["row"], np.arange(n_good * SIZE))


def _fuzz(goods: list[bytes], n: int, rng) -> tuple[list[bytes], dict[str, int]]:
    """n malformed packets, each with the seq of a good one (where it has a seq), and the reasons
    they must be counted under."""
    out, reasons = [], {}
    kinds = ["random", "truncated", "version", "kind", "modality", "seq-type", "n-huge", "n-size", "nan", "inf",
             "counts-str", "dup-identical"]
    per = n // len(goods)
    for i in range(n):
        # an unknown key makes every fuzzed packet unique: identical bad packets in flight together
        # would (rightly) be counted as duplicates of each other instead of under their reason
        base = {**msgpack.unpackb(goods[min(i // per, len(goods) - 1)], raw=False), "fuzz_id": i}
        k = kinds[i % len(kinds)]
        if k == "random":
            raw, why = b"\xc1" + rng.bytes(int(rng.integers(1, 200))), "not-msgpack"
        elif k == "truncated":
            g = goods[i % len(goods)]
            raw, why = g[: int(rng.integers(1, len(g) - 1))], "not-msgpack"
        elif k == "version":
            raw, why = msgpack.packb({**base, "v": 7}), "unknown-version"
        elif k == "kind":
            raw, why = msgpack.packb({**base, "kind": "frames"}), "unknown-kind"
        elif k == "modality":
            raw, why = msgpack.packb({**base, "modality": "no-such"}), "unknown-modality"
        elif k == "seq-type":
            raw, why = msgpack.packb({**base, "seq": "x"}), "bad-type"
        elif k == "n-huge":
            raw, why = msgpack.packb({**base, "n": 1 << 40}), "oversized"
        elif k == "n-size":
            raw, why = msgpack.packb({**base, "n": base["n"] - 1}), "bad-size"
        elif k in ("nan", "inf"):
            pos = np.frombuffer(base["positions"], "<f4").copy()
            pos[int(rng.integers(0, len(pos)))] = np.nan if k == "nan" else np.inf
            raw, why = msgpack.packb({**base, "positions": pos.tobytes()}), "non-finite"
        elif k == "counts-str":
            raw, why = msgpack.packb({**base, "counts": "not bytes"}), "bad-type"
        else:  # the good packet itself, re-sent: must be a duplicate, never a second result
            raw, why = goods[min(i // per, len(goods) - 1)], "duplicate"
            # sent BEFORE its original here, so the original becomes the duplicate: same count either way
        out.append(raw)
        reasons[why] = reasons.get(why, 0) + 1
    return out, reasons
