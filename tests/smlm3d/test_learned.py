"""smlm3d learned path: second pass, two-emitter fits, conformal quantiles, bundle size."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.modalities.smlm3d import mle
from streamer.modalities.smlm3d.localize import PAIR, REJECTED, localize
from streamer.modalities.smlm3d.metrics import assess
from streamer.modalities.smlm3d.model import MODEL_DIR, N_GROUPS, conformal_quantiles
from streamer.modalities.smlm3d.psf import DEFAULT_PSF, model
from streamer.modalities.smlm3d.simulate import render, SimConfig, simulate_frames


def test_pair_fit_resolves_two_close_emitters():
    rng = np.random.default_rng(2)
    M = 60
    t1 = np.column_stack([np.full(M, 5.6), np.full(M, 6.5), np.full(M, -200.0), np.full(M, 4000.0), np.full(M, 30.0)])
    t2 = t1.copy()
    t2[:, 0] += 2.0   # 200 nm apart
    t2[:, 2] = 300.0
    t2[:, 4] = 0.0
    rois = rng.poisson(model(t1, 13, DEFAULT_PSF, 100.0) + model(t2, 13, DEFAULT_PSF, 100.0)).astype(float)
    single = mle.fit(rois, DEFAULT_PSF, 100.0)
    th, sd, ll, _ = mle.fit_pairs(rois, single.theta, DEFAULT_PSF, 100.0, 30)
    assert np.all(2 * (ll - single.loglik) > 25)          # the data say two
    xs = np.sort(th[:, [0, 4]], axis=1)
    assert np.median(np.abs(xs[:, 0] - 5.6)) < 0.15 and np.median(np.abs(xs[:, 1] - 7.6)) < 0.15
    # the single fit sits in between: ~1 px off either emitter
    assert np.median(np.abs(single.theta[:, 0] - 6.6)) < 0.4


def test_second_pass_recovers_merged_pair_without_hurting_isolated():
    frames, truth = simulate_frames(SimConfig(n_frames=150, photons=5000, background=50, density=3.0,
                                              sampling="structure", structure_every=150, seed=5))
    T = np.column_stack([truth["x"], truth["y"], truth["z"]])
    out = {}
    for p in (1, 2):
        L = localize(frames, passes=p)
        keep = (L.flags & REJECTED) == 0
        out[p] = (assess(L.item[keep], L.xyz[keep], truth["item"], T), L)
    assert out[2][0]["ji"] > out[1][0]["ji"] + 2          # hidden / merged emitters found
    assert (out[2][1].flags & PAIR).any()
    iso = simulate_frames(SimConfig(n_frames=150, photons=5000, background=50, density=0.3, sampling="csr", seed=6))
    Ti = np.column_stack([iso[1]["x"], iso[1]["y"], iso[1]["z"]])
    r = [assess(*(lambda L: (L.item[(L.flags & REJECTED) == 0], L.xyz[(L.flags & REJECTED) == 0]))(localize(iso[0], passes=p)),
                iso[1]["item"], Ti)["rmse_lat"] for p in (1, 2)]
    assert r[1] <= r[0] * 1.05


def test_conformal_quantile_is_finite_sample_valid():
    rng = np.random.default_rng(0)
    cov = []
    for _ in range(200):
        s = np.abs(rng.normal(size=(60, 1)))
        q = conformal_quantiles(s, np.zeros(60, int))[0, 0]
        cov.append(np.mean(np.abs(rng.normal(size=2000)) <= q))
    assert 0.895 <= np.mean(cov) <= 0.93   # >= 90 % on average, not grossly conservative
    assert conformal_quantiles(np.ones((5, 3)), np.zeros(5, int)).shape == (N_GROUPS, 3)


def test_bundles_small_and_complete():
    import json

    total = 0
    for name in ("trees-structure", "trees-csr"):
        man = json.loads((MODEL_DIR / name / "manifest.json").read_text())
        assert len(man["conformal"]["q"]) == N_GROUPS * (len(man["conformal"]["scale_edges"]) + 1)
        assert man["sampling"] in ("structure", "csr")
        total += sum((MODEL_DIR / name / man[k]).stat().st_size for k in ("reg", "cls", "scale"))
    assert total < 2_000_000


def test_render_helper_is_linear():
    t = {"item": np.array([0, 0]), "x": np.array([1000.0, 3000]), "y": np.array([1000.0, 3000]),
         "z": np.array([0.0, 100]), "photons": np.array([1000.0, 2000])}
    both = render(t, 1, 64, 64, 100.0, 0.0)
    one = render({k: v[:1] for k, v in t.items()}, 1, 64, 64, 100.0, 0.0)
    two = render({k: v[1:] for k, v in t.items()}, 1, 64, 64, 100.0, 0.0)
    np.testing.assert_allclose(both, one + two, atol=1e-9)
    assert both.sum() == pytest.approx(3000, rel=1e-3)


def test_pair_fit_recovers_pairs_whose_single_fit_leaves_the_z_range():
    """Two emitters ~4 px apart look like one wide, defocused blob: the single fit answers with
    |z| > 800 nm (rejected); the second pass must fit two emitters there instead of losing both."""
    n = 40
    t = {"item": np.repeat(np.arange(n), 2), "x": np.tile([3000.0, 3400.0], n), "y": np.full(2 * n, 3200.0),
         "z": np.full(2 * n, 450.0), "photons": np.full(2 * n, 20000.0)}
    rng = np.random.default_rng(4)
    frames = (100 + rng.poisson(render(t, n, 64, 64, 100.0, 200.0))).astype(np.uint16)
    T = np.column_stack([t["x"], t["y"], t["z"]])
    L1 = localize(frames, passes=1)
    k1 = (L1.flags & REJECTED) == 0
    L2 = localize(frames, passes=2)
    k2 = (L2.flags & REJECTED) == 0
    a1 = assess(L1.item[k1], L1.xyz[k1], t["item"], T)
    a2 = assess(L2.item[k2], L2.xyz[k2], t["item"], T)
    assert a2["ji"] >= 90 and a2["ji"] > a1["ji"] + 20, (a1["ji"], a2["ji"])
    assert a2["rmse_lat"] < 30


def test_shrink_weights_follow_held_out_error():
    from streamer.modalities.smlm3d.train import choose_shrink

    rng = np.random.default_rng(1)
    m = 4000
    truth = rng.normal(size=(m, 3))
    fit = truth + rng.normal(size=(m, 3))
    g = np.where(np.arange(m) < m // 2, 3, 7)   # two groups of one nearest-candidate bin
    corr = np.where((g == 3)[:, None], truth - fit, rng.normal(size=(m, 3)))  # exact vs pure noise
    w = choose_shrink(fit, corr, truth, g, np.ones(m, bool))
    assert w.shape == (N_GROUPS, 3)
    np.testing.assert_allclose(w[3], 1.0)
    np.testing.assert_allclose(w[7], 0.0)


def test_precision_filter_rejects_only_pairs_known_far_worse_than_isolated():
    """Sparse frames: a pair fit 1 px apart (each emitter known to many isolated CRLBs) is flagged,
    a pair 4 px apart (nearly independent emitters) is not."""
    from streamer.modalities.smlm3d.model import imprecise_pairs

    n = 30
    out = {}
    for sep in (100.0, 400.0):
        t = {"item": np.repeat(np.arange(n), 2), "x": np.tile([3000.0, 3000.0 + sep], n),
             "y": np.full(2 * n, 3200.0), "z": np.full(2 * n, 300.0), "photons": np.full(2 * n, 20000.0)}
        frames = (100 + np.random.default_rng(8).poisson(render(t, n, 64, 64, 100.0, 200.0))).astype(np.uint16)
        L = localize(frames, passes=2)
        pair = (L.flags & PAIR) != 0
        bad = imprecise_pairs(L, np.zeros(len(L), int), 100.0)
        assert not (bad & ~pair).any()                      # only pair fits are judged
        out[sep] = (pair.sum(), bad.sum())
        # crowded frames (count bin 2) are judged only where the rows of a sparse acquisition say so
        crowded = np.full(len(L), 2)
        assert not imprecise_pairs(L, crowded, 100.0).any()
        rows = np.arange(len(L)) % 2 == 0
        np.testing.assert_array_equal(imprecise_pairs(L, crowded, 100.0, rows=rows), bad & rows)
    assert out[100.0][0] >= n and out[100.0][1] >= 0.7 * out[100.0][0], out
    assert out[400.0][0] >= n and out[400.0][1] == 0, out


def test_pair_alternatives_find_the_better_configuration_of_a_look_alike_fit():
    """Two emitters 1.5 px apart along x at z 0 / +300 nm, 20k photons. A fit started with the pair
    axis turned to y and z mirrored (the astigmatic look-alike) stops in a worse optimum; the
    alternatives search finds a distinct optimum with a higher likelihood, at the truth. Started at
    the truth, no rival beats it."""
    rng = np.random.default_rng(3)
    M = 40
    t1 = np.column_stack([np.full(M, 5.5), np.full(M, 6.5), np.zeros(M), np.full(M, 20000.0), np.full(M, 200.0)])
    t2 = t1.copy()
    t2[:, 0] += 1.5
    t2[:, 2] = 300.0
    t2[:, 4] = 0.0
    rois = rng.poisson(model(t1, 13, DEFAULT_PSF, 100.0) + model(t2, 13, DEFAULT_PSF, 100.0)).astype(float)
    d = np.maximum(rois, -mle.READ_VAR + 1e-3) + mle.READ_VAR
    true9 = np.column_stack([t1[:, :4], t2[:, :4], np.full(M, 200.0)])
    th_t, ll_t, *_ = mle._pair_lm(d, true9, DEFAULT_PSF, 100.0, 30)
    ta, la, *_ = mle.pair_alternatives(rois, th_t, ll_t, DEFAULT_PSF, 100.0, 30)
    assert np.all(la <= ll_t + 1e-6)                      # nothing better than the right configuration
    look_alike = true9.copy()
    look_alike[:, [2, 6]] *= -1
    look_alike[:, [0, 4]], look_alike[:, [1, 5]] = 6.25, [[5.75, 7.25]]   # axis along y about the midpoint
    th_m, ll_m, *_ = mle._pair_lm(d, look_alike, DEFAULT_PSF, 100.0, 30)
    stuck = ll_m < ll_t - 1.0                              # rows where that start stopped in a worse optimum
    assert stuck.sum() >= M // 2, stuck.sum()
    ta, la, *_ = mle.pair_alternatives(rois[stuck], th_m[stuck], ll_m[stuck], DEFAULT_PSF, 100.0, 30)
    assert np.all(la > ll_m[stuck] + 1.0)
    x_sorted = np.sort(ta[:, [0, 4]], axis=1)
    assert np.median(np.abs(x_sorted[:, 0] - 5.5)) < 0.1 and np.median(np.abs(x_sorted[:, 1] - 7.0)) < 0.1


def test_ambiguous_pairs_are_dropped_everywhere_dim_fits_in_sparse_frames():
    from types import SimpleNamespace

    from streamer.modalities.smlm3d.model import ambiguous

    L = SimpleNamespace(pair_margin=np.array([np.inf, 3.0, 30.0, 3.0, -40.0, np.inf, np.inf]),
                        photons=np.array([5000.0, 5000.0, 5000.0, 5000.0, 5000.0, 20.0, 20.0]))
    out = ambiguous(L, np.array([0, 1, 1, 2, 2, 0, 2]))
    np.testing.assert_array_equal(out, [False, True, False, True, True, True, False])


def test_sparse_packet_cut_applies_only_to_sparse_packets_and_their_sparse_frames():
    """The sparse-acquisition cut: only in packets of >= min_frames frames averaging fewer than
    below_per_frame kept localizations, only in frames of <= frame_max kept ones, only below the score;
    already rejected localizations neither count nor get flagged again; no rule, no cut."""
    from streamer.modalities.smlm3d.model import sparse_packet_cut

    rule = {"score": 0.9, "below_per_frame": 1.4, "frame_max": 2, "min_frames": 4}
    # 4 frames: frame 0 three localizations (one rejected before), frame 1 three kept, frame 2 one, frame 3 none
    item = np.array([0, 0, 0, 1, 1, 1, 2])
    score = np.array([0.5, 0.95, 0.1, 0.5, 0.6, 0.99, 0.8], np.float32)
    kept = np.array([True, True, False, True, True, True, True])
    out = sparse_packet_cut(item, score, kept, 4, rule)  # 6 kept / 4 frames = 1.5: not sparse
    assert not out.any()
    kept2 = kept.copy()
    kept2[5] = False  # 5 kept / 4 frames = 1.25: sparse; frame 1 now holds 2 kept
    out = sparse_packet_cut(item, score, kept2, 4, rule)
    np.testing.assert_array_equal(out, [True, False, False, True, True, False, True])
    assert not sparse_packet_cut(item, score, kept2, 3, rule).any()  # fewer frames than min_frames
    assert not sparse_packet_cut(item, score, kept2, 4, None).any()
    assert sparse_packet_cut(item, score, kept2, 8, rule).sum() == 4  # 5 / 8: frames beyond the last count as empty
    # a short packet is judged with its stream's recent frames: sparse history -> cut, crowded -> none;
    # a long enough one alone, whatever the history (the same answer whichever worker serves it)
    assert sparse_packet_cut(item, score, kept2, 3, rule, history=(100.0, 50.0)).sum() == 4
    assert not sparse_packet_cut(item, score, kept2, 3, rule, history=(100.0, 300.0)).any()
    assert sparse_packet_cut(item, score, kept2, 4, rule, history=(100.0, 300.0)).sum() == 4


def test_pair_gain_singles_out_two_emitters_fitted_as_one():
    """The two-emitter fit's gain over the single fit: two emitters 100 nm apart at one z (a merged
    pair the single fit places between them, 50 nm off either) gain far more than 16; isolated
    emitters of the same brightness do not."""
    from types import SimpleNamespace

    from streamer.modalities.smlm3d.localize import pair_gain

    rng = np.random.default_rng(3)
    M = 40
    t1 = np.column_stack([np.full(M, 5.6), np.full(M, 6.5), np.full(M, 150.0), np.full(M, 10000.0), np.full(M, 200.0)])
    t2 = t1.copy()
    t2[:, 0] += 1.0
    t2[:, 4] = 0.0
    merged = rng.poisson(model(t1, 13, DEFAULT_PSF, 100.0) + model(t2, 13, DEFAULT_PSF, 100.0)).astype(float)
    iso = t1.copy()
    iso[:, 3] = 20000.0
    single = rng.poisson(model(iso, 13, DEFAULT_PSF, 100.0)).astype(float)
    gains = []
    for rois in (merged, single):
        f = mle.fit(rois, DEFAULT_PSF, 100.0)
        gains.append(pair_gain(SimpleNamespace(rois=rois, fit=f), np.arange(M), DEFAULT_PSF, 100.0))
    assert np.all(gains[0][0] > 16) and np.mean(gains[1][0] > 16) <= 0.05
    assert np.mean(gains[0][1] < 2.0) >= 0.9                # ... and closer than 2 px (the shipped cap)
    assert len(pair_gain(SimpleNamespace(rois=merged, fit=None), np.zeros(0, int))[0]) == 0


def test_merged_singles_only_among_the_rule_rows_single_fits_above_the_gain(monkeypatch):
    """merged_singles: only rows of the sparse rule, only single fits (pair fits are already two), only
    a gain above the bundle's ``merged_lr``; bundles without the key: none."""
    from types import SimpleNamespace

    from streamer.modalities.smlm3d import localize as loc
    from streamer.modalities.smlm3d.model import merged_singles

    gain = np.array([30.0, 30.0, 30.0, 5.0, 17.0, 40.0])
    sep = np.array([1.0, 1.0, 1.0, 1.0, 1.5, 3.0])  # px
    asked = []

    def fake_gain(L, rows, psf, pixel_nm):
        asked.append(rows.copy())
        return gain[rows], sep[rows]

    monkeypatch.setattr(loc, "pair_gain", fake_gain)
    L = SimpleNamespace(flags=np.array([0, PAIR, 0, 0, 0, 0], np.uint8))
    rows = np.array([True, True, False, True, True, True])
    rule = {"score": 0.9, "below_per_frame": 1.4, "frame_max": 6, "min_frames": 20, "merged_lr": 16.0,
            "merged_sep_nm": 200.0}
    # the last row: a strong gain from a second "emitter" 3 px away is no merged pair
    np.testing.assert_array_equal(merged_singles(L, rows, rule, None, 100.0), [True, False, False, False, True, False])
    np.testing.assert_array_equal(asked[0], [0, 3, 4, 5])   # the pair fit and the row outside the rule: no fit
    no_cap = {k: v for k, v in rule.items() if k != "merged_sep_nm"}
    np.testing.assert_array_equal(merged_singles(L, rows, no_cap, None, 100.0), [True, False, False, False, True, True])
    assert not merged_singles(L, rows, {k: v for k, v in rule.items() if k != "merged_lr"}, None, 100.0).any()
    assert not merged_singles(L, rows, None, None, 100.0).any()
    assert len(asked) == 2


def test_single_frame_packets_of_a_sparse_stream_get_the_sparse_cut():
    """A camera sending one frame per packet: each packet alone is too short to tell, the stream's
    recent frames tell (StreamDensity, per stream); another stream's history does not leak in."""
    from streamer.core.modality import Packet
    from streamer.modalities.smlm3d.predictors import TreesPredictor

    frames, _ = simulate_frames(SimConfig(n_frames=100, photons=1000.0, background=10.0, density=1.0,
                                          sampling="structure", seed=321))
    p = TreesPredictor()
    hdr = {"n": 1, "height": 64, "width": 64, "pixel_nm": 100.0, "baseline": 100.0, "adu_per_photon": 1.0}
    rejected = lambda outs: sum(int(((o["flags"] & REJECTED) != 0).sum()) for o in outs)  # noqa: E731
    alone = [p.predict_frames(frames[i:i + 1]) for i in range(100)]
    live = [p.predict(Packet("cam", i, 0.0, "smlm3d", "frames", 1, hdr, {"frames": frames[i:i + 1]}))
            for i in range(100)]
    whole = p.predict_frames(frames)
    assert rejected(alone) < rejected(live) <= rejected([whole])
    assert p.density.get("cam")[0] > 90 and p.density.get("other") == (0.0, 0.0)


def test_stream_density_forgets_the_stream_idle_longest():
    """Bounded memory evicts the least recently updated stream, never a stream still sending."""
    from streamer.modalities.smlm3d.model import StreamDensity

    d = StreamDensity(frames=500.0, max_streams=2)
    d.add("a", 10, 5)
    d.add("b", 10, 5)
    d.add("a", 10, 5)  # "a" is live again: "b" is now the one idle longest
    d.add("c", 10, 5)
    assert d.get("b") == (0.0, 0.0)
    assert d.get("a")[0] > 19 and d.get("c")[0] == 10


def test_shipped_bundles_record_the_sparse_cut_and_the_predictor_applies_it_per_packet():
    """Every shipped bundle carries its sparse-acquisition rule; the same frames as one sparse packet
    reject more localizations than as packets too short to tell."""
    import json

    from streamer.modalities.smlm3d.predictors import TreesPredictor

    for name in ("trees-structure", "trees-csr"):
        rule = json.loads((MODEL_DIR / name / "manifest.json").read_text())["sparse_packet"]
        assert 0.5 < rule["score"] < 1.0 and rule["min_frames"] >= 2 and rule["merged_lr"] > 14
        assert rule["pair_precision_k"] >= 2 and 100.0 < rule["merged_sep_nm"] < 300.0
    frames, _ = simulate_frames(SimConfig(n_frames=100, photons=1000.0, background=10.0, density=1.0,
                                          sampling="structure", seed=321))
    p = TreesPredictor()
    whole = p.predict_frames(frames)
    short = [p.predict_frames(frames[a:a + 10]) for a in range(0, 100, 10)]  # 10 < min_frames: no cut
    rej_whole = int(((whole["flags"] & REJECTED) != 0).sum())
    rej_short = sum(int(((o["flags"] & REJECTED) != 0).sum()) for o in short)
    assert sum(len(o["x"]) for o in short) == len(whole["x"])
    assert rej_whole > rej_short


def test_recalibration_keeps_ensembles_and_thresholds_and_redoes_quantiles(tmp_path):
    """`streamer train --recalibrate`: the bundle's ensembles, correction weights and thresholds stay
    byte for byte, the conformal quantiles are refitted on what the served model keeps."""
    import json

    from streamer.modalities.smlm3d.train import train_bundle

    m1 = train_bundle("structure", "b", n_chunks=8, rounds=8, out_root=tmp_path, verbose=False, cal_factor=0.5)
    files = {p.name: p.read_bytes() for p in (tmp_path / "b").glob("*.ubj")}
    q_old = np.asarray(m1["conformal"]["q"])
    # pretend the bundle was calibrated with other quantiles: recalibration must restore them from data
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    man["conformal"]["q"] = (2.0 * q_old).tolist()
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(man))
    m2 = train_bundle("structure", "b", n_chunks=8, rounds=8, out_root=tmp_path, verbose=False, cal_factor=0.5,
                      recalibrate=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").glob("*.ubj")} == files
    assert m2["score_threshold"] == m1["score_threshold"] and m2["shrink"] == m1["shrink"]
    np.testing.assert_allclose(m2["conformal"]["q"], q_old, rtol=1e-3)
    assert "recalibrated" in m2["conformal"]["calibrated_on"]


def _tuning_bin(rng, n_true=1000, n_bad=60, n_false=100, mle_tp=940, mle_fp=30, bg=0, cnt=0):
    """A synthetic tuning set with one populated (background, crowding) bin: good localizations score
    high, merged pairs (matched but tens of nm off) and false candidates score low."""
    good = rng.uniform(0.55, 1.0, n_true - n_bad)
    bad = rng.uniform(0.0, 0.7, n_bad)
    false = rng.uniform(0.0, 0.4, n_false)
    score = np.concatenate([good, bad, false]).astype(np.float32)
    label = np.r_[np.ones(n_true, bool), np.zeros(n_false, bool)]
    is_good = np.r_[np.ones(len(good), bool), np.zeros(n_bad + n_false, bool)]
    err = np.r_[np.abs(rng.normal(0, 5, len(good))), np.full(n_bad, 12.0), np.zeros(n_false)]
    m = len(score)
    frames = 1000
    return {"score": score, "label": label, "good": is_good, "err_lat": np.abs(err), "err_ax": np.abs(err),
            "bg": np.full(m, bg), "cnt": np.full(m, cnt),
            "f_true": np.full(frames, n_true // frames), "f_tp": np.full(frames, mle_tp / frames),
            "f_fp": np.full(frames, mle_fp / frames), "f_bg": np.full(frames, bg), "f_cnt": np.full(frames, cnt)}


def test_sparse_threshold_is_the_most_precise_cut_within_the_mle_jaccard():
    """Sparse frames: the threshold is the highest grid cut (up to the score keeping 97 % of the good
    localizations) whose Jaccard index is still the one-pass MLE's or more; not the efficiency cut."""
    from streamer.modalities.smlm3d.train import GOOD_KEEP, _choose_threshold, _thresholds

    T = _tuning_bin(np.random.default_rng(0))
    thr = _thresholds(T)[0, 0]
    n_true = int(T["f_true"].sum())
    ji_mle = 100.0 * T["f_tp"].sum() / (n_true + T["f_fp"].sum())

    def ji(t):
        keep = T["score"] >= t
        return 100.0 * (keep & T["label"]).sum() / (n_true + (keep & ~T["label"]).sum())

    t_prec = np.quantile(T["score"][T["good"]], 1.0 - GOOD_KEEP)
    grid = np.linspace(0.02, 0.99, 98)
    assert ji(thr) >= ji_mle
    above = grid[(grid > thr + 1e-9) & (grid <= t_prec)]
    assert all(ji(t) < ji_mle for t in above)
    t_eff = _choose_threshold(T["score"], T["label"].astype(int), T["err_lat"], T["err_ax"], n_true, ji_mle)
    assert thr > t_eff + 0.1   # the efficiency cut alone keeps merged pairs the precise one drops
    # a floor no cut reaches: the efficiency cut (itself never below the floor where one is possible)
    hard = _tuning_bin(np.random.default_rng(0), mle_tp=999, mle_fp=0)
    assert _thresholds(hard)[0, 0] == pytest.approx(
        _choose_threshold(hard["score"], hard["label"].astype(int), hard["err_lat"], hard["err_ax"], n_true, 99.9))


def test_retune_keeps_ensembles_and_restores_the_training_thresholds(tmp_path):
    """`streamer train --retune`: ensembles and correction weights stay byte for byte; the score
    thresholds are chosen again with training's rule on training's tuning set (so they come back to
    the freshly trained bundle's values), and the conformal quantiles are refitted."""
    import json

    from streamer.modalities.smlm3d.train import train_bundle

    m1 = train_bundle("structure", "b", n_chunks=8, rounds=8, out_root=tmp_path, verbose=False, cal_factor=0.5)
    assert "sparse chunks" in m1["score_threshold_tuning"]
    files = {p.name: p.read_bytes() for p in (tmp_path / "b").glob("*.ubj")}
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    man["score_threshold"] = np.full((3, 3), 0.5).tolist()
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(man))
    m2 = train_bundle("structure", "b", n_chunks=8, rounds=8, out_root=tmp_path, verbose=False, cal_factor=0.5,
                      retune=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").glob("*.ubj")} == files
    assert m2["shrink"] == m1["shrink"]
    np.testing.assert_allclose(m2["score_threshold"], m1["score_threshold"])
    np.testing.assert_allclose(m2["conformal"]["q"], m1["conformal"]["q"], rtol=1e-3)
    assert "retuned" in m2["score_threshold_tuning"]


def test_conformal_groups_split_each_group_by_predicted_scale():
    """The interval's Mondrian groups: the feature groups x the bin of the predicted lateral log scale;
    the background level stays the most significant digit (sparse groups pool over it)."""
    from streamer.modalities.smlm3d.features import FEATURE_NAMES
    from streamer.modalities.smlm3d.model import BG_EDGES, conformal_groups, groups

    rng = np.random.default_rng(0)
    X = np.zeros((400, len(FEATURE_NAMES)), np.float32)
    X[:, FEATURE_NAMES.index("log_bg")] = np.log(rng.choice([10.0, 50.0, 200.0], 400))
    X[:, FEATURE_NAMES.index("frame_count")] = rng.integers(0, 12, 400)
    X[:, FEATURE_NAMES.index("nn1_dist")] = rng.uniform(0, 20, 400)
    ls = rng.normal(size=(400, 3))
    edges = [-0.5, 0.0, 0.5]
    g, gq = groups(X), conformal_groups(X, ls, edges)
    np.testing.assert_array_equal(gq // 4, g)
    np.testing.assert_array_equal(gq % 4, np.digitize(ls[:, :2].mean(1), edges))
    per_bg = N_GROUPS * 4 // (len(BG_EDGES) + 1)
    np.testing.assert_array_equal(gq // per_bg, np.digitize(np.exp(X[:, FEATURE_NAMES.index("log_bg")]), BG_EDGES))
    np.testing.assert_array_equal(conformal_groups(X, ls, None), g)   # bundles calibrated before the axis


def test_ratio_interval_resamples_structures():
    """The RMSE/CRLB interval of a cell resamples whole structures: identical blocks give a point, one
    block with a few large errors (a close pair on one filament) widens it, and it holds the estimate."""
    from streamer.modalities.smlm3d.evaluate import ratio_interval

    rng = np.random.default_rng(1)
    c2 = np.full(2000, 4.0)
    block = np.repeat(np.arange(20), 100)
    lo, hi = ratio_interval(np.full(2000, 4.0), c2, block)
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)
    d2 = rng.chisquare(2, 2000) * 2.0          # lateral d^2 of an efficient estimator: E = 4 = c2
    d2[:3] = 900.0                              # three 30-nm errors, all in block 0
    est = np.sqrt(d2.sum() / c2.sum())
    lo, hi = ratio_interval(d2, c2, block)
    assert lo < est < hi and hi - lo > 0.2
    lo2, hi2 = ratio_interval(d2, c2, np.arange(2000))   # resampling emitters: narrower
    assert hi2 - lo2 < hi - lo
