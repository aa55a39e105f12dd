"""Issue 15: instrument-aware model, out-of-range flags, segmentation, self-calibration, per-trace distance."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.modalities.minflux import deshrink, general, offgrid, traces
from streamer.modalities.minflux.prediction import FLAG_LOW_PHOTONS, FLAG_NO_INTERVAL, FLAG_OUT_OF_RANGE
from streamer.modalities.minflux.simulate import STATE_TWO


def _rulers(d, v0, bg, photons, half_l, m=1, seed=0):
    r = len(d)
    rng = np.random.default_rng(seed)
    return general.simulate_rulers(np.asarray(d, float), np.full(r, 0.6), np.full(r, v0), np.full(r, bg), np.ones(r),
                                   np.full(r, photons), np.full(r, half_l), m, rng, 0.0, 0.0)


@pytest.mark.parametrize("v0,bg,half_l", [(1.0, 0.5, 15.0), (0.85, 6.0, 10.0), (0.93, 2.0, 25.0)])
def test_instrument_normalised_features_recover_distance(v0, bg, half_l):
    """With the true instrument the closed-form separation is right at any v0, b, L/2 (here ~noise-free)."""
    from streamer.modalities.minflux import physics

    d = np.array([10.0, 25.0, 45.0, 60.0])
    theta = np.array([0.1, 0.6, 1.0, 1.4])
    centre = np.zeros((4, 2))
    pos = physics.beam_positions(centre, half_l)
    sep = np.stack([d * np.cos(theta), d * np.sin(theta)], axis=1)
    mid = np.array([[1.0, -2.0]])
    mu = physics.expected_counts(pos, mid - sep / 2, mid + sep / 2, 50.0, 1.0, 1.0, physics.a_from_v0(v0), bg)
    X = general.instrument_features(mu, pos, v0, bg)  # expected counts: noise-free
    names = general.GENERAL_FEATURES
    assert np.allclose(X[:, names.index("dcf")], d, atol=0.05)
    assert np.allclose(X[:, names.index("dcf_pool")], d, atol=0.05)  # both axes' level pooled: same answer
    assert np.allclose(X[:, names.index("half_l")], half_l, atol=1e-3)
    assert np.allclose(X[:, names.index("v0")], v0)


def test_effective_photons():
    assert general.effective_photons(np.array([100.0]), 1.0, 0.0)[0] == pytest.approx(100.0)
    assert general.effective_photons(np.array([100.0]), 0.9, 5.0)[0] == pytest.approx(0.81 * 70**2 / 100, rel=1e-5)


@pytest.fixture(scope="module")
def tiny_general(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "general"
    cfg = general.GeneralConfig(n_rulers=6000, tuples_per_ruler=2, max_rounds=8, noise_rounds=5, max_depth=4,
                                noise_depth=3, neff_bins=2, bin_width_nm=11.0, nthread=1,
                                deshrink_rulers=20_000, deshrink_later_rulers=20_000,
                                deshrink_later_keeps=(0.5,), deconvolution_rulers_per_cell=0)
    manifest = general.train_general(cfg, out, log=lambda *a: None)
    return out, manifest


def test_general_bundle_and_flags(tiny_general):
    out, manifest = tiny_general
    assert set(manifest["boosters"]) == {"point", "noise"}
    assert manifest["feature_names"] == list(general.GENERAL_FEATURES)
    assert manifest["deshrink"]["file"] in manifest["sha256"]
    assert manifest["deshrink"]["stage2"]["instrument_pool"] == 20_000 // 375
    cal = manifest["calibration"]
    cfg = general.GeneralConfig()
    assert (cal["v0_cuts"], cal["background_cuts"]) == (list(cfg.interval_v0_cuts), list(cfg.interval_background_cuts))
    # (the photon cuts come from np.geomspace, whose last bit depends on the numpy build and the CPU's vector path)
    assert np.allclose(cal["photon_cuts"], cfg.interval_photon_cuts, rtol=1e-12, atol=0)
    assert cal["half_l_cuts"] == list(cfg.interval_half_l_cuts)  # both inside the space's L/2 range
    assert len(cal["cells"]) == 5 * 7 * 4 * 16 and len(cal["pooled_cells"]) == len(cal["neff_cuts"]) + 1
    # 12,000 tuples, 20 % of them calibrating: every instrument cell is sparse and falls back on its
    # tuples' information bins (the intervals below are still served)
    assert all("q_bins" not in c for c in cal["cells"]) and all("q_bins" in c for c in cal["pooled_cells"])
    p = general.GeneralPredictor(out, backend="xgboost")
    assert p.deshrink is not None and len(p.deshrink.stages) == 1 and "+ds" in p.model_id
    rec = _rulers([20.0, 30.0], 0.9, 2.0, 300.0, 15.0, m=50, seed=3)
    ok = p.predict_with(rec.tuples, 0.9, 2.0)
    assert np.isfinite(ok.distance).all()
    assert (ok.flags & FLAG_OUT_OF_RANGE).sum() < len(ok.flags) // 2
    inside = np.isfinite(ok.lower)
    assert inside.mean() > 0.5 and (ok.lower[inside] <= ok.distance[inside]).all()
    # an instrument outside the trained space: flagged, interval dropped
    for v0, bg in ((0.6, 2.0), (0.9, 30.0)):
        bad = p.predict_with(rec.tuples, v0, bg)
        assert (bad.flags & FLAG_OUT_OF_RANGE).all() and (bad.flags & FLAG_NO_INTERVAL).all()
        assert np.isnan(bad.lower).all()
    # a pattern size outside the trained L/2 range
    wide = _rulers([20.0], 0.9, 2.0, 300.0, 40.0, m=20)
    assert (p.predict_with(wide.tuples, 0.9, 2.0).flags & FLAG_OUT_OF_RANGE).all()
    # background-only tuples: too few photons
    dark = _rulers([20.0], 0.9, 2.0, 13.0, 15.0, m=20)
    assert (p.predict_with(dark.tuples, 0.9, 2.0).flags & FLAG_LOW_PHOTONS).any()


def test_bundle_of_the_first_13_features_still_serves(tiny_general, tmp_path):
    """A bundle trained before the shared-level features (its manifest names the first 13) gets those
    13 columns; a bundle naming features this code does not compute is refused."""
    import json
    import shutil

    import xgboost as xgb

    from streamer.core.compile import file_sha256

    out, manifest = tiny_general
    rec = _rulers([20.0, 30.0], 0.9, 2.0, 300.0, 15.0, m=30, seed=4)
    X = general.instrument_features(rec.tuples.counts, rec.tuples.positions, 0.9, 2.0)
    y = rec.truth["d_nm"].astype(np.float32)
    old = tmp_path / "old"
    shutil.copytree(out, old)
    m = json.loads((old / "manifest.json").read_text())
    for role, cols in (("point", X[:, :13]), ("noise", np.column_stack([X[:, :13], y]))):
        b = xgb.train({"max_depth": 2, "nthread": 1}, xgb.DMatrix(cols, np.log(np.abs(y - 25.0) + 1.0)), 3)
        b.save_model(str(old / m["boosters"][role]))
    m["feature_names"] = list(general.GENERAL_FEATURES[:13])
    m["sha256"] = {f: file_sha256(old / f) for f in [*m["boosters"].values(), m["deshrink"]["file"]]}
    (old / "manifest.json").write_text(json.dumps(m))
    p = general.GeneralPredictor(old, backend="xgboost")
    assert np.isfinite(p.predict_with(rec.tuples, 0.9, 2.0).distance).all()
    m["feature_names"] = list(general.GENERAL_FEATURES[:12]) + ["something_else"]
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="features"):
        general.GeneralPredictor(old, backend="xgboost")


def test_shipped_general_bundle_is_small_and_complete():
    from streamer.core import model_bundle

    m = model_bundle.load_manifest("minflux/general")
    size = sum(f.stat().st_size for f in model_bundle.bundle_dir("minflux/general").iterdir() if f.is_file())
    # 6.6 MB: deshrink.npz (stage 1 and its nodes, the deconvolution) 3.7 MB, the manifest 2.2 MB (2,240 conformal cells)
    assert size < 7_500_000
    assert m["regime"] == "general" and set(m["boosters"]) == {"point", "noise"}
    assert m["deshrink"]["file"] in m["sha256"] and m["deshrink"]["keep"] == 0.7
    # the deconvolution serves; the later stages, which it replaces, are not shipped
    assert "deconvolution" in m["deshrink"] and deshrink.later_keeps(m["deshrink"]) == []
    cfg, cal = general.GeneralConfig(), m["calibration"]
    assert (cal["v0_cuts"], cal["background_cuts"]) == (list(cfg.interval_v0_cuts), list(cfg.interval_background_cuts))
    # (the photon cuts come from np.geomspace, whose last bit depends on the numpy build and the CPU's vector path)
    assert np.allclose(cal["photon_cuts"], cfg.interval_photon_cuts, rtol=1e-12, atol=0)
    assert cal["half_l_cuts"] == list(cfg.interval_half_l_cuts) and cal["data"]["rulers"] == 72_000_000
    assert all("q_bins" in c for c in cal["cells"])  # 72 M calibration rulers: no cell falls back on a pooled one
    assert m["flags"]["v0_range"][0] <= 0.8 and m["flags"]["v0_range"][1] >= 1.0
    assert m["flags"]["background_range"][0] <= 0.2 and m["flags"]["background_range"][1] >= 8.0
    assert m["data"]["space"]["d_range_nm"][0] <= 3 and m["data"]["space"]["d_range_nm"][1] >= 60


def test_bundle_gets_later_stages_and_fresh_intervals(tiny_general, tmp_path):
    """The two steps that built the shipped bundle's tables, on a copy of the tiny one."""
    import shutil

    out, manifest = tiny_general
    b = tmp_path / "general"
    shutil.copytree(out, b)
    before = general.GeneralPredictor(b, backend="xgboost").model_id
    m = general.recalibrate_intervals(b, rulers=30_000, seed=11, log=lambda *a: None)
    cal = m["calibration"]
    assert cal["data"] == {**cal["data"], "rulers": 30_000, "seed": 11}
    assert cal["half_l_cuts"] == [13.5, 16.5, 19.5, 22.5] and cal["data"]["seeds"] == [11]  # one chunk
    assert len(cal["cells"]) == general.CellLayout.of(cal).n_cells == 5 * 7 * 4 * 16
    assert cal["pooled_cells"] != manifest["calibration"]["pooled_cells"]
    m = general.recalibrate_intervals(b, rulers=30_000, seed=11, log=lambda *a: None, chunk=20_000)
    assert m["calibration"]["data"]["seeds"] == [11, 12]  # chunk k: seed + k
    assert m["calibration"]["cells"] != cal["cells"] or m["calibration"]["pooled_cells"] != cal["pooled_cells"]
    m = general.recalibrate_intervals(b, rulers=30_000, seed=11, log=lambda *a: None, background_cuts=(),
                                      photon_cuts=(), half_l_cuts=())  # the earlier cells: v0 class x information bin
    assert len(m["calibration"]["cells"]) == (len(cal["neff_cuts"]) + 1) * (len(cal["v0_cuts"]) + 1) == 2 * 7
    m = general.add_stage(b, rulers=10_000, keep=0.4, log=lambda *a: None)  # the next: stage 3
    assert m["deshrink"]["stage3"]["keep3"] == 0.4 and m["deshrink"]["stage3"]["rulers"] == 10_000
    assert m["deshrink"]["stage3"]["seed"] == m["data"]["seed"] + 517
    p = general.GeneralPredictor(b, backend="xgboost")  # hashes checked on load
    assert [k for _, k in p.deshrink.stages] == [0.5, 0.4] and p.model_id != before
    m = general.add_stage(b, rulers=10_000, stage=2, log=lambda *a: None)  # stage 2 relearned, stage 3 dropped
    assert deshrink.later_keeps(m["deshrink"]) == [general.GeneralConfig().deshrink_later_keeps[0]]
    assert "resid3" not in np.load(b / "deshrink.npz").files
    with pytest.raises(ValueError, match="stage 4 asked for"):
        general.add_stage(b, stage=4, log=lambda *a: None)
    p = general.GeneralPredictor(b, backend="xgboost")
    rec = _rulers([20.0, 30.0], 0.9, 2.0, 300.0, 15.0, m=50, seed=3)
    out_ = p.predict_with(rec.tuples, 0.9, 2.0)
    inside = np.isfinite(out_.lower)
    assert inside.mean() > 0.5 and (out_.lower[inside] <= out_.distance[inside]).all()


def test_recipe_with_the_deconvolution_skips_the_later_stages(tmp_path, monkeypatch):
    """train_general with the deconvolution on: stage 1 only, then add_deconvolution on the saved bundle."""
    calls = []

    def fake(out_dir, rulers_per_cell, mu, lam, workers, log=print):
        calls.append((out_dir, rulers_per_cell, mu, lam, workers))
        from streamer.core import model_bundle

        return model_bundle.load_manifest(out_dir)

    monkeypatch.setattr(general, "add_deconvolution", fake)
    cfg = general.GeneralConfig(n_rulers=6000, tuples_per_ruler=2, max_rounds=4, noise_rounds=3, max_depth=3,
                                noise_depth=2, neff_bins=2, bin_width_nm=11.0, nthread=1, deshrink_rulers=10_000,
                                deshrink_later_rulers=10_000, deconvolution_rulers_per_cell=3, deconvolution_mu=2.0)
    m = general.train_general(cfg, tmp_path / "g", log=lambda *a: None)
    assert calls == [(tmp_path / "g", 3, 2.0, 1.0, 1)]
    assert "deshrink" in m and deshrink.later_keeps(m["deshrink"]) == []
    assert np.load(tmp_path / "g" / "deshrink.npz").files.count("resid2") == 0


def test_bundle_gets_a_deconvolution(tiny_general, tmp_path):
    """general.add_deconvolution on a copy of the tiny bundle: simulated, solved, recorded, served; its
    saved counts read back; counts of other rulers refused."""
    import shutil

    out, _ = tiny_general
    b = tmp_path / "general"
    shutil.copytree(out, b)
    before = general.GeneralPredictor(b, backend="xgboost").model_id
    counts = tmp_path / "counts.npz"
    lines = []
    m = general.add_deconvolution(b, rulers_per_cell=1, mu=3.0, workers=1, counts=counts, log=lines.append)
    entry = m["deshrink"]["deconvolution"]
    assert (entry["rulers_per_cell"], entry["mu"], entry["seed"]) == (1, 3.0, m["data"]["seed"] + 601)
    assert counts.is_file() and any("counts saved" in line for line in lines)
    p = general.GeneralPredictor(b, backend="xgboost")  # hashes checked on load
    assert p.deshrink.deconv is not None and p.model_id != before
    rec = _rulers([20.0, 30.0], 0.9, 2.0, 300.0, 15.0, m=50, seed=3)
    got = p.predict_with(rec.tuples, 0.9, 2.0)
    inside = np.isfinite(got.lower)
    assert np.isfinite(got.distance).all() and (got.lower[inside] <= got.distance[inside]).all()
    # the later stages are not served with the deconvolution: dropped, the same answers from a smaller bundle
    assert deshrink.later_keeps(m["deshrink"]) == [0.5]
    m = general.drop_later_stages(b, log=lambda *a: None)
    assert deshrink.later_keeps(m["deshrink"]) == [] and "resid2" not in np.load(b / "deshrink.npz").files
    again = general.GeneralPredictor(b, backend="xgboost").predict_with(rec.tuples, 0.9, 2.0)
    assert np.array_equal(again.distance, got.distance) and np.array_equal(again.lower, got.lower, equal_nan=True)
    # the saved counts: each node from its own stream, so one node simulated alone gives the same counts
    seed = entry["seed"]
    saved = general._read_counts(counts, seed, 1)
    alone = general._deconvolution_counts(str(b), [(3, 2, 1)], 1, seed)
    assert np.array_equal(saved[(3, 2, 1)], alone[(3, 2, 1)]) and saved[(3, 2, 1)].sum() > 0
    with pytest.raises(ValueError, match="rulers per cell"):
        general.add_deconvolution(b, rulers_per_cell=2, workers=1, counts=counts, log=lambda *a: None)
    with pytest.raises(ValueError, match="no deconvolution"):
        general.drop_later_stages(out, log=lambda *a: None)  # the original serves its stages
    # the trained-range flag reads the posterior mean, not the unclamped deconvolved distance: with
    # T = x + 45 the served distances leave 2-68 nm, the posterior means do not
    from streamer.modalities.minflux import deconvolution

    arrays = dict(np.load(b / "deshrink.npz"))
    arrays["deconv"] = np.broadcast_to(deconvolution.SERVED_X + 45.0, arrays["deconv"].shape).astype(np.float16)
    general._write_response_table(b, m, arrays, lambda *a: None)
    shifted = general.GeneralPredictor(b, backend="xgboost").predict_with(rec.tuples, 0.9, 2.0)
    raw = p.raw_distance(rec.tuples, 0.9, 2.0)
    assert np.allclose(shifted.distance, raw + 45.0, atol=0.1) and (shifted.distance > 68.0).mean() > 0.5
    assert np.array_equal(shifted.flags & FLAG_OUT_OF_RANGE, got.flags & FLAG_OUT_OF_RANGE)


class _Identity:
    """A 'booster' whose prediction is the first input column (calibrate_intervals' MAPIE view of it)."""

    def inplace_predict(self, X):
        return np.asarray(X, np.float32)[:, 0]


def test_intervals_cover_each_v0_class_when_calibrated_per_class():
    """Equal information, errors 3x wider at v0 near 1: pooled cells over-cover one class and
    under-cover the other; a cell per v0 class covers each at ~90 %."""
    rng = np.random.default_rng(5)

    def draw(n):
        v0 = rng.choice([0.9, 0.999], n)
        y = rng.uniform(5, 55, n)
        d_hat = y + rng.normal(0, np.where(v0 > 0.99, 3.0, 1.0))
        return np.column_stack([d_hat, v0]).astype(np.float32), y.astype(np.float32), v0
    X, y, v0 = draw(40_000)
    info = np.full(len(y), 100.0, np.float32)
    Xt, yt, v0t = draw(20_000)
    for cuts in ((), (0.95,)):
        cal = general.calibrate_intervals(_Identity(), X, y, info, 0.0, 1, 10.0, 0.9, v0=v0, v0_cuts=cuts)
        lo, hi, _ = general._Intervals(cal).apply(Xt[:, 0], np.full(len(yt), 100.0, np.float32), v0t)
        inside = (lo <= yt) & (yt <= hi)
        cov = [inside[v0t == v].mean() for v in (0.9, 0.999)]
        if cuts:
            assert 0.88 < min(cov) and max(cov) < 0.92, cov
        else:  # one pooled cell: the narrow class over-covered, the wide one under
            assert cov[0] > 0.97 and cov[1] < 0.85, cov


def test_instrument_cells_cover_each_background_and_photon_class():
    """Equal information, but errors 2x wider at a bright background and 1.5x wider at few photons:
    information bins under-cover those tuples; a cell per (background x photon) class covers each at
    ~90 %. A class with too few calibration tuples falls back on the pooled cell of each tuple's
    information bin."""
    rng = np.random.default_rng(6)

    def draw(n):
        b = rng.choice([0.5, 6.0], n)
        photons = rng.choice([50.0, 800.0], n)
        y = rng.uniform(5, 55, n)
        d_hat = y + rng.normal(0, np.where(b > 3, 2.0, 1.0) * np.where(photons < 100, 1.5, 1.0))
        return np.column_stack([d_hat, b]).astype(np.float32), y.astype(np.float32), b, photons
    X, y, b, ph = draw(60_000)
    info = np.full(len(y), 100.0, np.float32)
    Xt, yt, bt, pht = draw(40_000)
    cal = general.calibrate_intervals(_Identity(), X, y, info, 0.0, 1, 10.0, 0.9, background=b, photons=ph,
                                      background_cuts=(3.0,), photon_cuts=(100.0,))
    iv = general._Intervals(cal)
    lo, hi, _ = iv.apply(Xt[:, 0], np.full(len(yt), 100.0, np.float32), 1.0, bt, pht)
    inside = (lo <= yt) & (yt <= hi)
    for bb in (0.5, 6.0):
        for pp in (50.0, 800.0):
            sel = (bt == bb) & (pht == pp)
            assert 0.88 < inside[sel].mean() < 0.92, (bb, pp, inside[sel].mean())
    pooled = general.calibrate_intervals(_Identity(), X, y, info, 0.0, 1, 10.0, 0.9)
    lo, hi, _ = general._Intervals(pooled).apply(Xt[:, 0], np.full(len(yt), 100.0, np.float32))
    wide = (bt == 6.0) & (pht == 50.0)
    assert ((lo <= yt) & (yt <= hi))[wide].mean() < 0.8  # the information bin alone under-covers them
    info_t = np.full(len(yt), 100.0, np.float32)
    one_b = np.broadcast_to(np.float32(6.0), (len(yt),))  # a stream's background: one class search
    assert np.array_equal(iv.rows(info_t, 1.0, one_b, pht), iv.rows(info_t, 1.0, np.array(one_b), pht))
    with pytest.raises(ValueError, match="background and photon"):
        iv.apply(Xt[:, 0], np.full(len(yt), 100.0, np.float32), 1.0)
    # one class nearly empty: its cell is sparse, its tuples get the pooled quantiles
    keep = ~((b == 6.0) & (ph == 50.0)) | (rng.random(len(y)) < 0.05)
    cal = general.calibrate_intervals(_Identity(), X[keep], y[keep], info[keep], 0.0, 1, 10.0, 0.9,
                                      background=b[keep], photons=ph[keep], background_cuts=(3.0,),
                                      photon_cuts=(100.0,))
    assert [("q_bins" in c) for c in cal["cells"]] == [True, True, False, True]  # (b class, photon class)
    iv = general._Intervals(cal)
    rows = iv.rows(np.full(len(yt), 100.0, np.float32), 1.0, bt, pht)
    assert (rows[wide] == 4).all() and (rows[~wide] < 4).all()  # 4 cells, then the pooled row
    lo2, hi2, _ = iv.apply(Xt[:, 0], np.full(len(yt), 100.0, np.float32), 1.0, bt, pht)
    every_cell_pooled = {**cal, "cells": cal["pooled_cells"] * 4}  # one information bin
    pl, ph_, _ = general._Intervals(every_cell_pooled).apply(Xt[:, 0], np.full(len(yt), 100.0, np.float32), 1.0,
                                                             bt, pht)
    assert np.array_equal(lo2[wide], pl[wide]) and np.array_equal(hi2[wide], ph_[wide])


def test_intervals_cover_each_half_l_class_when_calibrated_per_class():
    """Equal information and instrument, errors 3x wider at a wide beam pattern (L/2 22 nm) than at a
    narrow one (11 nm): one cell over-covers one and under-covers the other; a cell per L/2 class
    covers each at ~90 %. A layout with L/2 classes needs each tuple's L/2."""
    rng = np.random.default_rng(8)

    def draw(n):
        hl = rng.choice([11.0, 22.0], n).astype(np.float32)
        y = rng.uniform(5, 55, n)
        d_hat = y + rng.normal(0, np.where(hl > 15, 3.0, 1.0))
        return np.column_stack([d_hat, hl]).astype(np.float32), y.astype(np.float32), hl
    X, y, hl = draw(40_000)
    info = np.full(len(y), 100.0, np.float32)
    b, ph = np.full(len(y), 1.0, np.float32), np.full(len(y), 200.0, np.float32)
    Xt, yt, hlt = draw(20_000)
    info_t, bt, pht = (np.full(len(yt), v, np.float32) for v in (100.0, 1.0, 200.0))
    for cuts in ((), (15.0,)):
        cal = general.calibrate_intervals(_Identity(), X, y, info, 0.0, 1, 10.0, 0.9, background=b, photons=ph,
                                          background_cuts=(3.0,), half_l=hl, half_l_cuts=cuts)
        iv = general._Intervals(cal)
        assert len(cal["cells"]) == 2 * (len(cuts) + 1) and cal["half_l_cuts"] == list(cuts)
        lo, hi, _ = iv.apply(Xt[:, 0], info_t, 1.0, bt, pht, hlt)
        inside = (lo <= yt) & (yt <= hi)
        cov = [inside[hlt == h].mean() for h in (11.0, 22.0)]
        if cuts:
            assert 0.88 < min(cov) and max(cov) < 0.92, cov
            assert (iv.rows(info_t, 1.0, bt, pht, hlt) == np.where(hlt > 15, 2, 0)).all()  # L/2 class major
            one = np.broadcast_to(np.float32(22.0), (len(yt),))  # a stream's L/2: one class search
            assert (iv.rows(info_t, 1.0, bt, pht, one) == 2).all()
            with pytest.raises(ValueError, match="L/2"):
                iv.apply(Xt[:, 0], info_t, 1.0, bt, pht)
        else:  # one cell: the narrow pattern over-covered, the wide one under
            assert cov[0] > 0.97 and cov[1] < 0.85, cov


def test_intervals_read_calibrations_made_before_the_pooled_cells_were_stored():
    """Earlier bundles kept a copy of the pooled quantiles in each sparse cell and no pooled list."""
    rng = np.random.default_rng(7)
    y = rng.uniform(5, 55, 20_000).astype(np.float32)
    X = (y + rng.normal(0, 1.0, len(y))).astype(np.float32)[:, None]
    info = rng.uniform(50.0, 500.0, len(y)).astype(np.float32)
    cal = general.calibrate_intervals(_Identity(), X, y, info, 0.0, 2, 10.0, 0.9, v0=np.full(len(y), 0.9),
                                      v0_cuts=(0.5,))
    assert [("q_bins" in c) for c in cal["cells"]] == [False, False, True, True]  # no tuple has v0 < 0.5
    old = {**cal, "cells": [{**cal["pooled_cells"][j % 2], "pooled": True} if "q_bins" not in c else c
                            for j, c in enumerate(cal["cells"])]}
    del old["pooled_cells"], old["background_cuts"], old["photon_cuts"], old["half_l_cuts"]
    Xt = X[:500, 0]
    for v0 in (0.3, 0.9):  # a sparse class, a calibrated one
        new_, old_ = (general._Intervals(c).apply(Xt, info[:500], v0) for c in (cal, old))
        assert all(np.array_equal(a, b) for a, b in zip(new_, old_))


def test_harmonic_terms_match_closed_form():
    from streamer.modalities.minflux.estimators.closed_form import harmonic_fit

    rec = _rulers([15.0, 40.0], 0.9, 1.0, 500.0, 15.0, m=10)
    P, Q, m0, var_pq, var_m0 = traces.harmonic_terms(rec.tuples.counts, rec.tuples.positions)
    a0, a1, psi = harmonic_fit(rec.tuples.counts, rec.tuples.positions)
    assert np.allclose(m0, a0) and np.allclose(np.hypot(P, Q), a1)
    assert (var_pq > 0).all() and (var_m0 > 0).all()


def test_squared_separation_is_continuous_and_inverts():
    d = np.array([0.0, 5.0, 30.0, 60.0])
    r = np.cos(traces.physics.K_NM * d / 2) ** 2
    assert np.allclose(np.sqrt(traces.squared_separation(r)), d, atol=1e-6)
    eps = 1e-7
    assert abs(traces.squared_separation(1 - eps) - traces.squared_separation(1 + eps)) < 1e-2  # ~2 nm^2 x 1e-3


def test_debiased_sqrt_removes_most_of_the_bias_of_a_noisy_square():
    """A per-trace d^2 is unbiased but noisy; sqrt(max(d^2, 0)) reads low. The corrected distance is
    never negative, equals the plain root without noise, and has at most half its bias."""
    rng = np.random.default_rng(3)
    assert traces.debiased_sqrt(100.0, 0.0) == 10.0 and traces.debiased_sqrt(-5.0, 0.0) == 0.0
    assert abs(traces.expected_sqrt(100.0, 1e-9) - 10.0) < 1e-6
    for d, sd in ((8.0, 50.0), (10.0, 60.0), (12.5, 100.0)):
        x = rng.normal(d * d, sd, 40_000)
        plain = np.sqrt(np.maximum(x, 0.0)).mean() - d
        fixed = np.array([traces.debiased_sqrt(v, sd) for v in x])
        assert fixed.min() >= 0.0
        assert abs(fixed.mean() - d) < 0.5 * abs(plain), (d, sd, plain, fixed.mean() - d)


def test_segmentation_calibration_and_trace_distance():
    """One stream (v0 0.9, b 3): >= 95% state accuracy, v0 +-0.01, b +-10%, per-trace intervals."""
    rec = offgrid.simulate_stream(0.9, 3.0, 3000, seed=11, distances=(12.5, 35.0))
    t = rec.tuples
    P, Q, m0, vpq, vm0, vq = traces.harmonic_terms(t.counts, t.positions, with_var_q=True)
    n = t.counts.sum(axis=(1, 2)).astype(float)
    seg = traces.Segmenter()
    cal = traces.StreamCalibration()
    dist = traces.TraceDistance(block=150)
    states = []
    for start in range(0, len(t), 500):  # streaming, packets of 500
        sl = slice(start, start + 500)
        tr = int(t.trace_id[sl][0])
        assert (t.trace_id[sl] == tr).all()
        s = seg.segment(tr, P[sl], Q[sl], vpq[sl], n[sl], cal.background)
        cal.add(t.counts[sl], s, P[sl], Q[sl], m0[sl], vpq[sl], vm0[sl], vq[sl])
        two = (s == STATE_TWO) & (rec.truth["state"][sl] == STATE_TWO)  # truth-filtered: tests the estimator
        dist.add(tr, P[sl][two], Q[sl][two], m0[sl][two], vpq[sl][two], vm0[sl][two], vq[sl][two])
        states.append(s)
    acc = np.mean(np.concatenate(states) == rec.truth["state"])
    assert acc >= 0.95
    assert cal.calibrated
    assert abs(cal.v0 - 0.9) <= 0.01
    assert abs(cal.background / 3.0 - 1) <= 0.10
    for tr, d in ((0, 12.5), (1, 35.0)):
        est, lo, hi = dist.estimate(tr, 0.9, 3.0)
        assert lo <= est <= hi and hi - lo < 30
        assert abs(est - d) < 8


def test_live_predictor_publishes_results(tiny_general, monkeypatch):
    """The modality adapter returns the declared optional arrays and they encode."""
    from streamer.core import wire as core_wire
    from streamer.modalities.minflux import MODALITY, live
    from streamer.modalities.minflux.wire import encode_batch

    out, _ = tiny_general
    lp = live.LivePredictor(out, backend="xgboost")
    adapter = live.LiveModalityPredictor.__new__(live.LiveModalityPredictor)
    adapter.inner, adapter.model_id = lp, lp.model_id
    rec = offgrid.simulate_stream(0.95, 1.0, 600, seed=5, distances=(20.0,))
    msg = core_wire.unpack(encode_batch("s", 0, rec.tuples[:600]))
    packet = core_wire.decode_packet(msg, MODALITY)
    res = adapter.predict(packet)
    for key in ("state", "v0", "background", "trace_distance", "trace_lower", "trace_upper"):
        assert key in res and len(res[key]) == 600
    core_wire.encode_result(packet, MODALITY.results, res, adapter.model_id)
    # a user-supplied calibration overrides the live one
    monkeypatch.setenv(live.ENV_V0, "0.91")
    monkeypatch.setenv(live.ENV_BACKGROUND, "2.5")
    fixed = live.LivePredictor(out, backend="xgboost")
    r2 = fixed.process("s", rec.tuples[:600])
    assert np.allclose(r2["v0"], 0.91) and np.allclose(r2["background"], 2.5)
    assert "v0=0.91" in fixed.model_id


def test_live_predictor_measures_two_on_tuples_only(tiny_general):
    """Tuples segmented 1-on / background get NaN and FLAG_NOT_TWO_ON; the 2-on ones get exactly what
    the model gives them in a whole-packet call with the same instrument."""
    from streamer.modalities.minflux import live
    from streamer.modalities.minflux.prediction import FLAG_NO_INTERVAL, FLAG_NOT_TWO_ON

    out, _ = tiny_general
    lp = live.LivePredictor(out, backend="xgboost", v0=0.95, background=1.0)
    rec = offgrid.simulate_stream(0.95, 1.0, 1500, seed=7, distances=(20.0,))
    res = [lp.process("s", rec.tuples[i:i + 500]) for i in range(0, 1500, 500)]
    r = {k: np.concatenate([x[k] for x in res]) for k in res[0]}
    two = r["state"] == STATE_TWO
    assert 0.2 < two.mean() < 0.9  # the trace has 2-on, 1-on and background-only stretches
    assert np.isnan(r["distance"][~two]).all() and np.isnan(r["lower"][~two]).all()
    assert ((r["flags"][~two] & (FLAG_NOT_TWO_ON | FLAG_NO_INTERVAL)) == (FLAG_NOT_TWO_ON | FLAG_NO_INTERVAL)).all()
    assert not (r["flags"][two] & FLAG_NOT_TWO_ON).any() and np.isfinite(r["distance"][two]).all()
    whole = lp.model.predict_with(rec.tuples, np.float32(0.95), np.float32(1.0))
    assert np.array_equal(r["distance"][two], whole.distance[two])
    assert np.array_equal(r["lower"][two], whole.lower[two], equal_nan=True)
    assert np.array_equal(r["flags"][two], whole.flags[two])


def test_per_trace_table_over_persisted_results():
    rng = np.random.default_rng(0)
    tid = np.repeat(np.arange(3), 1000)
    d = 20.0 + rng.normal(0, 5, 3000)
    out = traces.per_trace_table(tid, d, np.ones(3000), np.ones(3000, bool), block=100)
    assert np.allclose(out["distance"], 20.0, atol=1.0)
    assert ((out["lower"] <= 20.0) | (out["upper"] >= 20.0)).all()


def test_offgrid_grid_evaluation_runs(tiny_general):
    """The issue-15 grid evaluation end to end on a tiny bundle (numbers are meaningless here)."""
    out, _ = tiny_general
    res = offgrid.evaluate_grid(rulers_per_cell=2, tuples_per_ruler=2, bundle=str(out), reference=None,
                                backend="xgboost", log=lambda *a: None)
    assert len(res["rows"]) == 243 and res["summary"]["cells"] == 243
    assert 0 < res["summary"]["eligible_cells"] < 243
    md = offgrid.markdown(res, "test")
    assert "eligible cells pass all three" in md and md.count("\n|") > 243


def test_trace_floor_falls_with_distance():
    """The per-trace CRB floor: finite, and largest at the smallest distance (d^2 carries little
    information near 0)."""
    from streamer.modalities.minflux import offgrid

    rows = offgrid.trace_floor(n_streams=2, tuples_per_trace=1500, seed=5)
    assert [r["d"] for r in rows] == list(offgrid.D_GRID) and all(r["traces"] == 2 for r in rows)
    crb = np.array([r["median_trace_crb"] for r in rows])
    assert np.isfinite(crb).all() and (crb > 0).all() and crb[0] > 2 * crb[5]
    assert all(r["se_of_mean"] > 0 for r in rows)


def test_calibration_share_separates_the_streams_v0_error():
    """Per-trace errors = a shared slope x the stream's relative v0 error + own noise + a bias: the
    slope is recovered, and removing it leaves the noise and the bias (not the v0 part)."""
    from streamer.modalities.minflux import offgrid

    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 2e-3, 400)
    e = 0.3 + 1800.0 * x + rng.normal(0.0, 2.0, 400)
    out = offgrid._calibration_share(np.r_[e, np.nan], np.r_[x, 0.0])  # an unanswered trace is left out
    assert out["v0_slope_nm"] == pytest.approx(1800.0, rel=0.1)
    assert out["rmse_v0_removed"] == pytest.approx(np.hypot(2.0, 0.3), rel=0.1)
    assert np.sqrt(np.mean(e ** 2)) > 1.5 * out["rmse_v0_removed"]
    assert np.isnan(offgrid._calibration_share(e, np.zeros(400))["v0_slope_nm"])  # instrument given: nothing to fit


def test_self_calibrated_grid_evaluation_runs(tiny_general):
    """The grid with each instrument's self-calibrated v0 / b (tiny bundle; numbers meaningless)."""
    out, _ = tiny_general
    res = offgrid.evaluate_grid_self_calibrated(rulers_per_cell=2, tuples_per_ruler=2, calib_tuples_per_trace=1500,
                                                bundle=str(out), backend="xgboost", log=lambda *a: None)
    assert len(res["rows"]) == 243 and len(res["calibration"]) == 9
    s = res["summary"]
    assert 0 < s["eligible_cells"] < 243 and 0 <= s["rmse_within_1.5x"] <= s["eligible_cells"]
    for c in res["calibration"]:  # the calibration streams bleach: every instrument gets calibrated
        assert c["calibrated"] and abs(c["bg_hat"] / c["bg"] - 1) < 0.2


def _v0_from_all_traces(cal: traces.StreamCalibration) -> float:
    """v0 recomputed from every trace's sums (the O(traces) definition the running sums replace)."""
    if cal.one_n < 2 * cal.min_one_tuples:
        return cal.prior_v0
    keys = list(cal.trace_one)
    sums = np.array([cal.trace_one[k] for k in keys])
    b = np.array([cal.trace_background(k)[0] if k != -1 else cal.background for k in keys])
    s2 = float((sums[:, 1] - 2.0 * b * sums[:, 0] + sums[:, 3] * b * b - sums[:, 2]).sum())
    s1 = float((sums[:, 0] - sums[:, 3] * b).sum())
    v = traces.v0_from_sums(cal.p_sum, cal.q_sum, s1, s2)  # sum P and sum Q^2 - var Q do not depend on b
    return v if np.isfinite(v) else cal.prior_v0


def test_running_v0_equals_the_per_trace_definition():
    """Traces interleaved in packets, some reaching their own background mid-stream, some never,
    some tuples without a trace id: the O(1) running v0 equals the sum over all traces, always."""
    rec = offgrid.simulate_stream(0.93, 2.0, 1200, seed=5)
    t = rec.tuples
    P, Q, m0, vpq, vm0, vq = traces.harmonic_terms(t.counts, t.positions, with_var_q=True)
    order = np.random.default_rng(2).permutation(len(t) // 200) * 200  # packets of 200 in shuffled order
    cal = traces.StreamCalibration(min_background_tuples=150, min_one_tuples=100)
    state = rec.truth["state"]
    checked = 0
    for k, a in enumerate(order):
        sl = slice(a, a + 200)
        for tr in np.unique(t.trace_id[sl]):
            m = t.trace_id[sl] == tr
            cal.add(t.counts[sl][m], state[sl][m], P[sl][m], Q[sl][m], m0[sl][m], vpq[sl][m], vm0[sl][m], vq[sl][m],
                    trace=None if k % 7 == 0 else int(tr))
        if cal.one_n >= 2 * cal.min_one_tuples:
            assert cal.v0 == pytest.approx(_v0_from_all_traces(cal), rel=1e-9)
            checked += 1
    own = sum(cal.trace_background(k)[1] for k in cal.trace_one if k != -1)
    assert checked > 10 and 0 < own < len(cal.trace_one) - 1
    assert abs(cal.v0 - 0.93) < 0.02


@pytest.mark.parametrize("tids", [[4, 4, 4], [1, 1, 2, 2, 2, 7], [1, 2, 1, 3], [5], [3, 3, 9, 3]])
def test_trace_selections_match_masks_in_first_appearance_order(tids):
    """Runs become slices (views) when every trace is one run; otherwise masks; same tuples, same order."""
    from streamer.modalities.minflux.live import _trace_selections

    tids = np.asarray(tids, np.int64)
    sels, keys = _trace_selections(tids)
    _, first = np.unique(tids, return_index=True)
    assert keys == [int(t) for t in tids[np.sort(first)]]
    idx = np.arange(len(tids))
    for sel, k in zip(sels, keys):
        np.testing.assert_array_equal(idx[sel], np.flatnonzero(tids == k))
    contiguous = len(keys) == 1 + int((tids[1:] != tids[:-1]).sum())
    assert all(isinstance(s, slice) for s in sels) == contiguous
