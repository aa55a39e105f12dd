"""Per-trace answers merged over workers (partials.py): the rows hold exactly the sums the worker
added, any split of the packets over workers merges to answers from all tuples, and they survive
the pipeline's store."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.modalities.minflux import live, offgrid, partials
from streamer.modalities.minflux.simulate import STATE_BACKGROUND, STATE_ONE, STATE_TWO
from streamer.modalities.minflux.traces import STATE_UNKNOWN


def _run(rec, workers: int, packet: int = 500, **kw):
    lps = [live.LivePredictor(**kw) for _ in range(workers)]
    t = rec.tuples
    outs = [lps[k % workers].process("s", t[i:i + packet]) for k, i in enumerate(range(0, len(t), packet))]
    cat = {k: np.concatenate([o[k] for o in outs]) for k in ("item", "part_trace", "part_kind", "part_n", "part_sums")}
    return lps, outs, cat


@pytest.fixture(scope="module")
def stream():
    return offgrid.simulate_stream(0.93, 2.0, 3000, seed=21, distances=(10.0, 30.0, 50.0))


def test_rows_are_exactly_the_sums_the_worker_added(stream):
    (lp,), outs, cat = _run(stream, 1)
    st = lp.streams["s"]
    for o in outs:  # every row points at a tuple of its own packet
        assert ((o["item"] >= 0) & (o["item"] < 500)).all() and len(o["item"]) == len(o["part_n"])
    assert cat["part_sums"].shape == (len(cat["part_n"]), 2, 6)
    kind, n, s, tr = cat["part_kind"], cat["part_n"], cat["part_sums"], cat["part_trace"]
    assert n[kind == STATE_BACKGROUND].sum() == st.cal.bg_n
    assert np.isclose(s[kind == STATE_BACKGROUND, 0, 0].sum(), st.cal.bg_sum, rtol=1e-12)
    assert 2 * n[kind == STATE_ONE].sum() == st.cal.one_n
    assert np.isclose(s[kind == STATE_ONE, :, 4].sum(), st.cal.p_sum, rtol=1e-9)
    assert np.isclose(s[kind == STATE_ONE, :, 5].sum(), st.cal.q_sum, rtol=1e-9)
    for t, acc in st.traces.traces.items():
        rows = (kind == STATE_TWO) & (tr == t)
        assert n[rows].sum() == len(acc.blocks) * st.traces.block + acc.cur_n
        assert np.allclose(s[rows].sum(axis=0), np.sum(acc.blocks, axis=0) + acc.cur, rtol=1e-9)
        assert n[rows].max() <= st.traces.block  # jackknife blocks
    # merged calibration = the worker's own
    cal = partials.calibration(tr, kind, n, s)
    assert cal["calibrated"] == st.cal.calibrated
    assert np.isclose(cal["background"], st.cal.background) and np.isclose(cal["v0"], st.cal.v0, rtol=1e-9)


def test_two_workers_merge_to_answers_from_all_tuples(stream):
    lps, _, cat = _run(stream, 2)
    red = partials.reduce(np.full(len(cat["part_n"]), "s"), cat["part_trace"], cat["part_kind"], cat["part_n"],
                          cat["part_sums"])
    assert list(red["trace_id"]) == [0, 1, 2] and red["calibrated"].all()
    for j, d in enumerate((10.0, 30.0, 50.0)):
        per_worker = [lp.streams["s"].traces.traces[j] for lp in lps]
        assert red["two_on_tuples"][j] == sum(len(a.blocks) * 200 + a.cur_n for a in per_worker)
        assert red["lower"][j] <= red["distance"][j] <= red["upper"][j]
        assert abs(red["distance"][j] - d) < 6.0
    assert abs(red["v0"][0] - 0.93) < 0.02 and abs(red["background"][0] / 2.0 - 1) < 0.1
    # a given instrument is used as is
    fixed = partials.reduce(np.full(len(cat["part_n"]), "s"), cat["part_trace"], cat["part_kind"], cat["part_n"],
                            cat["part_sums"], v0=0.93, background=2.0)
    assert (fixed["v0"] == 0.93).all() and (fixed["background"] == 2.0).all()


def test_static_predictors_return_no_partials():
    """The partial-sum table is optional: other MINFLUX predictors' results carry no ``m``."""
    from streamer.core import wire as core_wire
    from streamer.modalities.minflux import MODALITY
    from streamer.modalities.minflux.wire import encode_batch
    from streamer.pipeline.worker import Served, serve_raw

    rec = offgrid.simulate_stream(1.0, 1.0, 200, seed=2, distances=(20.0,))
    res = serve_raw(Served({"minflux": "closed-form"}), encode_batch("s", 0, rec.tuples))
    assert res.m is None and res.detections == {} and len(res.items["distance"]) == 200
    assert MODALITY.results.detection_noun == "per-trace partial sums"
    assert core_wire.VERSION >= 2


def test_pipeline_persists_partials_and_traces_merges_them(tmp_path):
    """Sink + 2 workers with --out: every packet's partials stored once; `streamer traces` merges them."""
    from streamer.modalities.minflux.verbs.traces import per_trace
    from streamer.pipeline.launcher import run_local_pipeline
    from streamer.pipeline.results import load_results

    rec = offgrid.simulate_stream(0.95, 1.0, 2000, seed=8, distances=(15.0, 40.0))
    summary = run_local_pipeline(rec.to_core(), workers=2, predictor="minflux:general", packet_size=500,
                                 out_dir=str(tmp_path), timeout=120)
    assert summary["tuples"] == len(rec) and summary["gaps"] == summary["rejected"] == 0
    res = load_results(tmp_path, "minflux")
    assert res["det_part_sums"].shape[1:] == (2, 6)
    assert len(np.unique(res["packet_seq"])) == len(res["packet_seq"]) == 8  # each packet once
    table = per_trace(res)
    assert list(table["trace_id"]) == [0, 1]
    assert table["two_on_tuples"].sum() == int((res["det_part_n"][res["det_part_kind"] == STATE_TWO]).sum())
    assert np.isfinite(table["distance"]).all() and (np.abs(table["distance"] - [15.0, 40.0]) < 8).all()
    # the command a user runs on the directory: the table, and the CSV with the same numbers
    import subprocess
    import sys

    csv = tmp_path / "traces.csv"
    out = subprocess.run([sys.executable, "-m", "streamer.cli", "traces", str(tmp_path), "--csv", str(csv)],
                         capture_output=True, text=True, check=True).stdout
    assert "| stream | trace | distance (nm) |" in out and "wrote 2 traces" in out
    rows = csv.read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("stream,trace_id,distance")
    assert np.isclose(float(rows[1].split(",")[2]), table["distance"][0])


def test_a_trace_without_its_own_background_carries_the_spread_between_traces():
    """Backgrounds that differ between traces: a trace that has no background-only tuples of its own
    takes the stream's background with an error that holds the spread, not only the mean's error."""
    from streamer.modalities.minflux.traces import StreamCalibration, background_spread

    rng = np.random.default_rng(0)
    cal = StreamCalibration()
    b_true = np.array([0.6, 1.0, 1.5, 2.2, 0.8])
    for t, b in enumerate(b_true):  # 2,000 background-only tuples each: their own estimates
        counts = rng.poisson(6 * b, 2000).astype(float)
        cal.add_terms(counts, np.zeros(2000, np.uint8), np.zeros((2000, 5, 2)), trace=t)
    b_new, se_new = cal.trace_background_se(99)  # a trace never seen in its background-only state
    own_b, own_se = cal.trace_background_se(2)
    assert abs(own_b - 1.5) < 0.05 and own_se < 0.02
    spread = background_spread(*zip(*[(s / (6 * k), k) for s, k in cal.trace_bg.values()]))
    assert abs(spread - b_true.std(ddof=1)) < 0.1
    assert se_new > 0.9 * spread > 10 * cal.background_se
    assert background_spread([1.0, 1.1], [500, 500]) == 0.0  # fewer than 3 traces: not measurable
    # the merged calibration carries the same spread
    kind = np.zeros(5, np.uint8)
    sums = np.zeros((5, 2, 4))
    sums[:, 0, 0] = [s for s, _ in cal.trace_bg.values()]
    merged = partials.calibration(np.arange(5), kind, np.full(5, 2000), sums)
    assert np.isclose(merged["background_spread"], spread)


def test_running_background_spread_equals_its_definition():
    """The O(1) running spread equals background_spread over the traces' own backgrounds, while
    traces gain background tuples packet by packet (some crossing the own-background threshold)."""
    from streamer.modalities.minflux.traces import StreamCalibration, background_spread

    rng = np.random.default_rng(3)
    cal = StreamCalibration()
    for step in range(40):
        t = int(rng.integers(0, 8))
        k = int(rng.integers(20, 150))
        cal.add_terms(rng.poisson(6 * (0.5 + 0.3 * t), k).astype(float), np.zeros(k, np.uint8), np.zeros((k, 5, 2)),
                      trace=t)
        own = [(s / (6 * n), n) for s, n in cal.trace_bg.values() if n >= cal.min_background_tuples]
        ref = background_spread(*zip(*own)) if own else 0.0
        assert np.isclose(cal.background_spread, ref, rtol=1e-9, atol=1e-9)


def test_one_vectorised_d2_call_equals_one_call_per_term():
    """estimate_from_blocks evaluates all its d^2 (total, leave-one-out, calibration +- se) in one
    stacked call: bit-identical to evaluating them one by one."""
    from streamer.modalities.minflux.traces import _d2, _t95, estimate_from_blocks

    rng = np.random.default_rng(1)
    for _ in range(50):
        k = int(rng.integers(4, 12))
        blocks = np.abs(rng.normal(100, 30, (k, 2, 4))) * [1, 3, 150, 1]
        nb = rng.integers(100, 201, k).astype(float)
        v0, b, v0_se, b_se = 0.93, 1.2, 0.01, 0.1
        total, n = blocks.sum(axis=0), nb.sum()
        d2 = _d2(total, n, v0, b)
        loo = np.array([_d2(total - blocks[j], n - nb[j], v0, b) for j in range(k)])
        var = (k - 1) / k * float(((loo - loo.mean()) ** 2).sum())
        cal2 = (0.5 * (_d2(total, n, v0 + v0_se, b) - _d2(total, n, v0 - v0_se, b))) ** 2 \
            + (0.5 * (_d2(total, n, v0, b + b_se) - _d2(total, n, v0, b - b_se))) ** 2
        half = float(np.sqrt(_t95(np.asarray(k - 1)) ** 2 * var + 1.6449**2 * cal2))
        est, lo, hi = estimate_from_blocks(blocks, nb, np.zeros((2, 4)), 0.0, v0, b, v0_se, b_se)
        assert lo == float(np.sqrt(max(d2 - half, 0.0))) and hi == float(np.sqrt(max(d2 + half, 0.0)))


def _level_rows(levels, n, b):
    """2-on rows whose per-axis mean m0 is ``level + b`` (the level the merge reads)."""
    n = np.asarray(n, np.int64)
    sums = np.zeros((len(n), 2, 6))
    sums[:, :, 1] = (n * (np.asarray(levels, float) + b))[:, None]
    return sums


def test_merge_relabels_rows_by_the_trace_level_all_workers_saw():
    """A worker that never saw a trace's pair calls its lone emitter 2-on: the merge compares each 2-on
    row's level with the trace's 2-on level over every worker's rows (the segmenter's own fractions)."""
    b = 2.0
    trace = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    levels = [100, 98, 103, 75, 52, 1.0, 50, 49]  # trace 1: only a lone emitter's rows, no pair to compare with
    n = [200, 200, 200, 200, 150, 100, 200, 200]
    sums = _level_rows(levels, n, b)
    cal = {"background": b, "own_background": {}}
    kind = partials.relabel(trace, np.full(8, STATE_TWO, np.uint8), n, sums, cal)
    assert list(kind) == [STATE_TWO] * 4 + [STATE_UNKNOWN] * 2 + [STATE_TWO] * 2
    # a trace's own background sets its levels: b = 26 on trace 0 puts 75 + 2 - 26 = 51 below 0.72 x (100 + 2 - 26)
    own = partials.relabel(trace, np.full(8, STATE_TWO, np.uint8), n, sums,
                           {"background": b, "own_background": {0: (26.0, 500)}})
    assert own[3] == STATE_UNKNOWN and own[6] == STATE_TWO
    # no background yet: nothing to compare a level with, rows unchanged
    same = np.full(8, STATE_TWO, np.uint8)
    assert partials.relabel(trace, same, n, sums, {"background": float("nan"), "own_background": {}}) is same


def test_four_workers_merge_with_their_lone_emitter_rows_relabelled():
    """Traces of 4 packets to 4 workers in turn: each worker sees one packet of each trace, and one that
    gets only packets after the first bleaching step calls the survivor 2-on. Merged, those rows are
    set aside and the 2-on rows are the pair's tuples again; with one worker the merge changes nothing."""
    rec = offgrid.simulate_stream(0.93, 2.0, 2000, seed=21, distances=(10.0, 30.0, 50.0))
    truth = rec.truth["state"]
    for workers in (1, 4):
        _, outs, cat = _run(rec, workers)
        packet = np.concatenate([np.full(len(o["part_n"]), j) for j, o in enumerate(outs)])
        kind, cal = partials.merge(cat["part_trace"], cat["part_kind"], cat["part_n"], cat["part_sums"])
        if workers == 1:
            assert (kind == cat["part_kind"]).all()
            continue

        def two_on_share(k):  # of the tuples in the 2-on rows' (packet, trace): truly 2-on, tuple-weighted
            rows = np.flatnonzero(k == STATE_TWO)
            share = [np.mean(truth[p * 500:(p + 1) * 500][rec.tuples.trace_id[p * 500:(p + 1) * 500] == t] == STATE_TWO)
                     for p, t in zip(packet[rows], cat["part_trace"][rows])]
            return np.average(share, weights=cat["part_n"][rows])

        moved = kind != cat["part_kind"]
        assert moved.sum() >= 2 and (kind[moved] == STATE_UNKNOWN).all()
        assert two_on_share(cat["part_kind"]) < 0.8 and two_on_share(kind) > 0.9
        assert cal["calibrated"] and abs(cal["v0"] - 0.93) < 0.01
        # relabelling touches 2-on rows only, and the calibration reads none: merge's one call holds
        again = partials.calibration(cat["part_trace"], kind, cat["part_n"], cat["part_sums"])
        assert again.keys() == cal.keys() and all(again[k] == cal[k] for k in cal)
        red = partials.reduce(np.full(len(packet), "s"), cat["part_trace"], cat["part_kind"], cat["part_n"],
                              cat["part_sums"])
        assert abs(red["distance"][2] - 50.0) < 4.0


def test_a_worker_that_sees_only_background_calls_it_background():
    """Windows of background-only tuples pass a permissive modulation test by chance; as the first
    emitter windows of a trace's view their level (~0) would become its 2-on level and every later
    background tuple "2-on". Two guards: the level floor (with the stream's background) and, for a
    trace not seen modulated yet, the strict first threshold z_first (what holds while the
    background is still the prior, 1 count against 4 here, and the floor passes everything)."""
    from streamer.modalities.minflux import traces

    rec = offgrid.simulate_stream(0.93, 4.0, 3000, seed=5, distances=(30.0, 30.0, 30.0))
    bg = rec.truth["state"] == STATE_BACKGROUND
    t = rec.tuples[bg]
    P, Q, m0, vpq, vm0 = traces.harmonic_terms(t.counts, t.positions)
    n = t.counts.sum(axis=(1, 2)).astype(float)
    assert len(t) > 1000

    def background_share(b, **kw):
        seg = traces.Segmenter(**kw)  # each 100 tuples a new trace's only view
        s = np.concatenate([seg.segment(tr, P[i:i + 100], Q[i:i + 100], vpq[i:i + 100], n[i:i + 100], b)
                            for tr, i in enumerate(range(0, len(t), 100))])
        return np.mean(s == STATE_BACKGROUND)

    assert background_share(4.0, z_first=2.0) == 1.0  # the floor
    assert background_share(4.0, z_first=2.0, floor_z=0.0) < 0.95  # neither guard
    assert background_share(1.0) > 0.99  # z_first
    assert background_share(1.0, z_first=2.0) < 0.95  # the floor alone, on the prior background


def test_a_worker_that_sees_the_pair_briefly_calls_the_survivor_one_on():
    """A packet in which the pair bleaches after ~60 tuples: more survivor than pair windows, so the
    level quantile alone is the survivor's; the level of the 40th highest window is the pair's."""
    from streamer.modalities.minflux import traces

    rec = offgrid.simulate_stream(0.93, 2.0, 4000, seed=8, distances=(30.0,))
    truth = rec.truth["state"]
    step = int(np.flatnonzero(truth == STATE_ONE)[0])
    sl = slice(step - 60, step + 600)
    assert (truth[sl][:60] == STATE_TWO).all() and (truth[sl][60:] == STATE_ONE).all()
    t = rec.tuples[sl]
    P, Q, m0, vpq, vm0 = traces.harmonic_terms(t.counts, t.positions)
    n = t.counts.sum(axis=(1, 2)).astype(float)
    one = {}
    for top_windows in (40, 10**9):  # 10**9: the quantile alone
        s = traces.Segmenter(top_windows=top_windows).segment(0, P, Q, vpq, n, 2.0)
        one[top_windows] = np.mean(s[100:] == STATE_ONE)  # the survivor, past the trailing window
    assert one[40] > 0.95 and one[10**9] < 0.5
