"""Dispatcher credit/re-send rules and per-stream gap/duplicate tracking (no sockets)."""

import pytest

from streamer.pipeline.dispatcher import Dispatcher, Job
from streamer.pipeline.security import check_bind, is_local
from streamer.pipeline.tracker import SeqTracker


def jobs(d, n):
    for i in range(n):
        d.add(Job(i, b"", "s", i))


def drain(d, now=0.0):
    out = []
    while (a := d.assign(now)) is not None:
        out.append((a[0], a[1].id))
    return out


def test_credits_bound_what_each_worker_holds():
    d = Dispatcher()
    jobs(d, 10)
    assert drain(d) == []  # no worker, nothing leaves
    d.seen(b"a", 0.0, free_slots=2)
    d.seen(b"b", 0.0, free_slots=2)
    sent = drain(d)
    assert len(sent) == 4 and {w for w, _ in sent} == {b"a", b"b"} and len(d.pending) == 6
    assert [j for _, j in sent] == [0, 1, 2, 3]  # oldest first
    assert d.complete(sent[0][1], sent[0][0]).id == sent[0][1]
    assert len(drain(d)) == 1  # exactly one credit came back


def test_dead_worker_jobs_go_back_to_the_front_and_late_answers_are_redundant():
    d = Dispatcher(heartbeat_timeout=1.0)
    jobs(d, 6)
    d.seen(b"a", 0.0, 2)
    d.seen(b"b", 0.0, 2)
    held = {w: [] for w in (b"a", b"b")}
    for w, j in drain(d):
        held[w].append(j)
    for j in held[b"b"]:
        d.complete(j, b"b")
    d.seen(b"b", 30.9)  # b still alive, a silent (past the job timeout: it holds jobs)
    lost, poison = d.expire(31.0)
    assert lost == [b"a"] and poison == [] and d.resent == 2
    assert [j.id for j in list(d.pending)[:2]] == sorted(held[b"a"])  # re-queued ahead of new work
    resent = drain(d, 31.0)
    assert [j for _, j in resent] == sorted(held[b"a"])
    # "a" was not dead after all: the first answer wins, the re-sent copy's answer is ignored
    first, second = held[b"a"]
    assert d.complete(first, b"a") is not None
    assert d.complete(first, b"b") is None and d.redundant == 1
    assert d.complete(second, b"b") is not None and d.complete(second, b"a") is None
    assert not d.in_flight and d.credits() == 2  # b's slots are back; a (re-registered) got none


def test_a_busy_worker_has_the_job_timeout_to_answer_an_idle_one_the_heartbeat_timeout():
    """A long packet keeps a worker from heartbeating: that must not make it dead (its jobs would be
    re-sent, and after max_deliveries given up -- lost); a killed worker is caught by its disconnect."""
    d = Dispatcher(heartbeat_timeout=1.0, job_timeout=30.0)
    jobs(d, 1)
    d.seen(b"busy", 0.0, 1)
    d.seen(b"idle", 0.0, 1)
    [(busy, _)] = drain(d)  # one job: one worker holds it
    idle = ({b"busy", b"idle"} - {busy}).pop()
    lost, _ = d.expire(5.0)  # both silent for 5 s
    assert lost == [idle] and d.resent == 0
    lost, _ = d.expire(31.0)
    assert lost == [busy] and d.resent == 1


def test_poison_packet_is_given_up_after_max_deliveries():
    d = Dispatcher(max_deliveries=2)
    jobs(d, 1)
    for k, w in enumerate([b"a", b"b"]):
        d.seen(w, 0.0, 1)
        assert drain(d) == [(w, 0)]
        poison = d.lost(w)
    assert [j.id for j in poison] == [0] and not d.pending and not d.in_flight


def test_job_timeout_resends_and_keeps_the_slot_until_answered():
    d = Dispatcher(heartbeat_timeout=100, job_timeout=1.0)
    jobs(d, 1)
    d.seen(b"a", 0.0, 1)
    d.seen(b"b", 0.0, 1)
    (w1, _), = drain(d, 0.0)
    d.seen(b"a", 2.0)
    d.seen(b"b", 2.0)
    d.expire(2.0)
    (w2, _), = drain(d, 2.0)
    assert w2 != w1 and d.resent == 1
    assert d.complete(0, w1) is not None and d.complete(0, w2) is None
    assert d.credits() == 2  # both slots free again


def test_tracker_gaps_duplicates_late_and_tail():
    t = SeqTracker()
    assert [t.classify("s", q) for q in (0, 1, 3, 3, 2, 1, 4)] == ["new", "new", "new", "duplicate", "late",
                                                                  "duplicate", "new"]
    assert (t.gaps, t.duplicates, t.late) == (0, 2, 1)
    t.classify("s", 7)  # 5 and 6 missing
    t.end("s", 10)  # 8 and 9 never came
    assert t.gaps == 4
    assert t.classify("other", 0) == "new" and t.gaps == 4  # streams are independent


@pytest.mark.parametrize("endpoint, local", [
    ("tcp://127.0.0.1:5555", True), ("tcp://localhost:1", True), ("ipc:///tmp/x", True),
    ("tcp://[::1]:5", True), ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False),
    ("tcp://192.168.1.2:5555", False), ("tcp://eth0:5555", False),
])
def test_endpoint_policy(endpoint, local):
    assert is_local(endpoint) is local
    if local:
        check_bind([endpoint], None)
    else:
        with pytest.raises(ValueError, match="CurveZMQ"):
            check_bind([endpoint], None)
        check_bind([endpoint], "keys")


def test_worker_handle_answers_every_packet_and_never_raises():
    from streamer.core import wire
    from streamer.modalities.minflux import wire as schema
    from streamer.modalities.minflux.simulate import simulate
    from streamer.pipeline.worker import Served, handle

    batch = simulate("static", 2, 20, seed=1).tuples
    served = Served({"minflux": "closed-form"})
    status, payload = handle(served, schema.encode_batch("s", 4, batch), 100, "w")
    assert status == b"DONE" and wire.decode_result(payload).seq == 4

    class Broken:
        model_id = "broken"

        def predict(self, packet):
            raise RuntimeError("boom")

    served.predictors["minflux"] = Broken()
    status, payload = handle(served, schema.encode_batch("s", 5, batch), 100, "w")
    err = wire.unpack(payload)
    assert status == b"FAIL" and err["reason"] == "worker-error" and "boom" in err["detail"] and err["seq"] == 5
    status, payload = handle(served, schema.encode_batch("s", 6, batch), 10, "w")
    assert status == b"FAIL" and wire.unpack(payload)["reason"] == "oversized"
    # a modality this worker does not serve is answered, not crashed on
    raw = wire.encode_packet("electron-x", "frames", "s", 7, {"n": 1}, {})
    status, payload = handle(served, raw, None, "w")
    assert status == b"FAIL" and wire.unpack(payload)["reason"] == "unknown-modality"


def test_end_confirmation_without_a_sink_fails_clearly(tmp_path):
    from streamer.client import BackPressure, Publisher

    with Publisher(f"ipc://{tmp_path}/ingest", "scope") as pub:
        with pytest.raises(BackPressure, match="cannot confirm the end of stream 'scope'.*no stats"):
            pub.end_confirmed(f"ipc://{tmp_path}/results", timeout=0.5)


def test_worker_first_heard_through_an_answer_gets_its_credits_from_the_next_heartbeat():
    """After a sink restart a worker may speak first with an answer for the old sink's job."""
    from streamer.pipeline.dispatcher import Dispatcher, Job

    d = Dispatcher()
    assert d.seen(b"w", 0.0) is True  # registered by a DONE: nothing announced yet
    d.add(Job(1, b"x", "s", 0))
    assert d.assign(0.0) is None  # no credits yet
    d.seen(b"w", 0.1, 2)  # its heartbeat
    assert d.assign(0.1) is not None and d.assign(0.1) is None  # one queued job: one sent
    d.add(Job(2, b"y", "s", 1))
    d.add(Job(3, b"z", "s", 2))
    d.seen(b"w", 0.2, 2)  # a heartbeat while it holds 1 job: 1 free slot, not 2
    assert d.assign(0.2) is not None and d.assign(0.2) is None
