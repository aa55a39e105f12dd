"""The shell's ZeroMQ subscriber: generic decoding, newest first within the drain budget."""

import time

import numpy as np
import pytest

import monitor_toy as toy
from streamer.core import wire
from streamer.monitor.state import MonitorState
from streamer.monitor.subscriber import ResultSubscriber

zmq = pytest.importorskip("zmq")


def _connect(pub, sub, state):
    """Slow-joiner handshake: publish stats until the subscriber sees one."""
    deadline = time.monotonic() + 5
    while not state.counters.pipeline:
        assert time.monotonic() < deadline, "subscriber never connected"
        pub.send_multipart([wire.TOPIC_STATS, wire.encode_stats({"rate_tuples_s": 0.0, "tuples": 0})])
        time.sleep(0.01)
        sub.drain(state, 0.01)


@pytest.fixture
def inproc():
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind("inproc://results")
    sub = ResultSubscriber("inproc://results", context=ctx, clock=lambda: 1000.0)
    yield pub, sub
    sub.close()
    pub.close()
    ctx.term()


def test_subscriber_hands_results_stats_and_errors_to_the_state(inproc):
    pub, sub = inproc
    view = toy.ToyView()
    state = MonitorState(toy.RESULTS.flags, modality="toy-monitor", view=view)
    _connect(pub, sub, state)
    for seq in range(5):
        pub.send_multipart([wire.TOPIC_RESULT, toy.result(seq, np.arange(seq * 10, seq * 10 + 10), t_acq=999.5)])
    pub.send_multipart([wire.TOPIC_ERROR, wire.encode_error("bad-size", "counts", stream="x", seq=1)])
    pub.send_multipart([wire.TOPIC_STATS, wire.encode_stats({"tuples": 50, "unserved": {"toy-monitor": 2}})])
    time.sleep(0.05)
    assert sub.drain(state, budget_s=0.05) == 7
    c = state.refresh_counters()
    assert c.messages == 5 and c.items == 50 and c.missed_messages == 0
    np.testing.assert_array_equal(view.values(), np.arange(50))
    assert len(view.blocks) == 1  # one hand-over per drain
    assert c.latency_ms["p50"] == pytest.approx(500.0)  # clock - t_acq of the newest
    assert c.errors_by_reason == {"bad-size": 1} and c.pipeline["unserved"] == {"toy-monitor": 2}
    assert c.flag_counts["odd"] == 25 and c.flag_counts["big"] == 0


def test_subscriber_decodes_newest_first_and_counts_skipped(inproc, monkeypatch):
    """A frame that cannot decode everything shows the newest results and counts the rest; garbage
    on the result topic is counted, never raised into the GUI."""
    pub, sub = inproc
    state = MonitorState(toy.RESULTS.flags, modality="toy-monitor", view=toy.ToyView())
    _connect(pub, sub, state)
    real_decode = wire.decode_message

    def slow_decode(payload):  # a busy GUI process: 1 ms per decode
        time.sleep(1e-3)
        return real_decode(payload)

    monkeypatch.setattr(wire, "decode_message", slow_decode)
    for frame in range(2):
        for i in range(frame * 50, frame * 50 + 50):
            payload = toy.result(i, np.ones(10), stream="test")
            pub.send_multipart([wire.TOPIC_RESULT, payload])
        pub.send_multipart([wire.TOPIC_RESULT, b"\xc1 not msgpack"])
        pub.send_multipart([wire.TOPIC_RESULT, payload, b"extra frame"])
        time.sleep(0.05)
        assert sub.drain(state, budget_s=0.01) == 52
    c = state.counters
    assert state.last_seq("test") == 99  # the newest result was shown
    assert 2 <= c.messages < 50  # ~10 ms of 1 ms decodes per frame
    assert c.messages + c.missed_messages == 99 - state.first_seq("test") + 1
    assert c.missed_messages > 0 and sub.undecodable == 4 and c.undecodable == 4
    assert c.items == 10 * c.messages
