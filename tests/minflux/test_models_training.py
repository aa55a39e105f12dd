"""Training -> bundle -> predictor, on tiny configs; plus checks of the shipped bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamer import cli
from streamer.modalities.minflux import datasets
from streamer.core import model_bundle
from streamer.modalities.minflux import training
from streamer.modalities.minflux.crb import crb_for_recording
from streamer.modalities.minflux.model_predictor import ModelPredictor
from streamer.modalities.minflux.predictor import FLAG_LOW_PHOTONS, load_predictor
from streamer.modalities.minflux.simulate import simulate_dynamic, simulate_static
from streamer.modalities.minflux.tuples import TupleBatch

TINY = training.TrainConfig(nthread=1, bin_width_nm=6.0,
                            point=training.BoosterParams(max_depth=3, max_rounds=15, eta=0.3))


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "static"
    data = datasets.DataConfig("static", n_groups=300, tuples_per_group=40, seed=5, cal_fraction=0.3)
    manifest = training.train_regime(data, TINY, out, log=lambda *a: None)
    return out, manifest


def test_bundle_manifest_and_hashes(tiny_bundle):
    out, manifest = tiny_bundle
    m = model_bundle.load_manifest(out)
    for key in ("regime", "feature_names", "boosters", "calibration", "data", "training", "metrics", "sha256", "flags"):
        assert key in m
    assert m["boosters"] == {"point": "point.ubj"}
    assert m["data"]["seed"] == 5 and m["data"]["simulator"]["regime"] == "static"
    assert sum(m["data"]["groups"].values()) == 300
    assert len(m["calibration"]["q_bins"]) == len(m["calibration"]["bin_edges_nm"]) - 1 == 4
    assert m["training"]["trees"]["point"] <= 15


def test_tampered_booster_is_refused(tiny_bundle, tmp_path):
    out, _ = tiny_bundle
    copy = tmp_path / "static"
    copy.mkdir()
    for f in out.iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    (copy / "point.ubj").write_bytes((copy / "point.ubj").read_bytes() + b" ")
    with pytest.raises(ValueError, match="sha256"):
        model_bundle.load_manifest(copy)
    with pytest.raises(FileNotFoundError, match="streamer train"):
        model_bundle.load_manifest(tmp_path / "nothing")


def test_predictor_outputs(tiny_bundle):
    out, manifest = tiny_bundle
    pred = ModelPredictor(out, backend="xgboost")
    rec = simulate_static(60, 30, seed=123)
    p = pred.predict(rec.tuples)
    n = len(rec)
    assert p.distance.shape == p.lower.shape == p.upper.shape == p.flags.shape == (n,)
    assert p.distance.dtype == p.lower.dtype == np.float32 and p.flags.dtype == np.uint8
    assert (p.lower <= p.upper).all()
    lo, hi = manifest["calibration"]["bin_edges_nm"][0], manifest["calibration"]["bin_edges_nm"][-1]
    # the calibrated range, widened only as far as needed to hold the reported distance
    assert (p.lower >= np.minimum(lo, p.distance) - 1e-4).all() and (p.upper <= np.maximum(hi, p.distance) + 1e-4).all()
    assert ((p.lower <= p.distance) & (p.distance <= p.upper)).all(), "an estimate lies in its own interval"
    assert manifest["sha256"]["point.ubj"][:12] in p.model_id
    # a tuple is predicted the same whatever packet it arrives in
    halves = [pred.predict(rec.tuples[s]) for s in (slice(0, 700), slice(700, n))]
    np.testing.assert_array_equal(np.concatenate([h.distance for h in halves]), p.distance)
    np.testing.assert_array_equal(np.concatenate([h.upper for h in halves]), p.upper)
    # a background-only tuple is flagged
    dark = TupleBatch.build(np.ones((1, 2, 3), np.uint16), rec.tuples.positions[:1])
    assert pred.predict(dark).flags[0] & FLAG_LOW_PHOTONS


def test_dynamic_training_balances_classes(tmp_path):
    data = datasets.DataConfig("dynamic", n_groups=60, tuples_per_group=200, seed=9, cal_fraction=0.3)
    m = training.train_regime(data, TINY, tmp_path / "dynamic", log=lambda *a: None)
    assert m["data"]["class_balanced"] is True
    assert m["calibration"]["bin_edges_nm"] == [15.0, 17.5, 25.0, 30.0]
    rec = simulate_dynamic(4, 200, seed=1)
    p = ModelPredictor(tmp_path / "dynamic", backend="xgboost").predict(rec.tuples)
    assert np.isfinite(p.distance).all()
    # background-only tuples (state 0) carry ~6 photons: flagged
    assert (p.flags[rec.truth["state"] == 0] & FLAG_LOW_PHOTONS).mean() > 0.9


def test_train_and_evaluate_cli(tmp_path):
    models, results = tmp_path / "models", tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other section\n\nkeep me\n")
    assert cli.main(["train", "--regime", "static", "--n-groups", "300", "--tuples-per-group", "40",
                     "--max-depth", "3", "--max-rounds", "10", "--bin-width", "6", "--threads", "1",
                     "--out", str(models)]) == 0
    assert (models / "static" / "manifest.json").is_file()
    assert cli.main(["evaluate", "--regime", "static", "--models", str(models), "--n-groups", "40",
                     "--tuples-per-group", "30", "--backends", "xgboost", "--results", str(results)]) == 0
    text = results.read_text()
    assert "keep me" in text and "## Accuracy and conformal coverage" in text and "MLE RMSE" in text
    # the same seed for test and training is refused
    seed = json.loads((models / "static" / "manifest.json").read_text())["data"]["seed"]
    assert cli.main(["evaluate", "--regime", "static", "--models", str(models), "--seed", str(seed),
                     "--backends", "xgboost", "--no-write"]) == 2


# ---- the shipped bundles -------------------------------------------------------------------

@pytest.mark.parametrize("regime", ["static", "dynamic"])
def test_shipped_bundle_is_sound(regime):
    """The committed model predicts held-out simulated tuples with calibrated intervals."""
    if not (model_bundle.DEFAULT_MODELS_DIR / "minflux" / regime / "manifest.json").is_file():
        pytest.fail(f"compiled_models/minflux/{regime} is missing: run `streamer train`")
    pred = load_predictor(f"{regime}-xgboost")
    rec = datasets.simulate_regime(regime, 400 if regime == "static" else 100, 50 if regime == "static" else 300, 4242)
    p = pred.predict(rec.tuples)
    y = rec.truth["d_nm"]
    crb = crb_for_recording(rec.truth, rec.tuples.positions)
    rmse = np.sqrt(np.mean((p.distance - y) ** 2))
    coverage = np.mean((y >= p.lower) & (y <= p.upper))
    # de-shrunk output: unbiased, RMSE near the CRB (the posterior mean would sit well below it)
    assert rmse < 1.1 * np.sqrt(np.mean(crb**2))
    assert abs(np.mean(p.distance - y)) < 0.3
    assert 0.86 <= coverage <= 0.94
    assert ((p.lower <= p.distance) & (p.distance <= p.upper)).all()
    assert pred.model_id.startswith(f"xgb-{regime}-")
