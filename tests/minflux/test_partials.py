"""Per-trace answers merged over workers (partials.py): the rows hold exactly the sums the worker
added, any split of the packets over workers merges to answers from all tuples, and they survive
the pipeline's store."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.modalities.minflux import live, offgrid, partials
from streamer.modalities.minflux.simulate import STATE_BACKGROUND, STATE_ONE, STATE_TWO


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
