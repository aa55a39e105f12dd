"""Backends and compiled libraries: parity with XGBoost, caching, auto routing, CLI.

Models are tiny (tens of trees) so each gcc build takes about a second; libraries are built once
per session in a temporary cache directory shared by all tests here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

xgb = pytest.importorskip("xgboost")
pytest.importorskip("tl2cgen")

from streamer import cli  # noqa: E402
from streamer.core.backends import (  # noqa: E402
    AutoBackend, CompiledBackend, XGBoostBackend, load_backend, random_features, write_crossover)
from streamer.core.compile import CompileOptions, ensure_library, library_path  # noqa: E402

N_FEATURE = 12
TOL_NM = 1e-3


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURE)).astype(np.float32)
    y = 18.0 + 6.0 * np.tanh(X[:, 0]) + 3.0 * X[:, 1] * X[:, 2] + np.sin(3 * X[:, 3]) + rng.normal(0, 0.5, n)
    return X, y.astype(np.float32)


def _with_missing(X: np.ndarray, seed: int) -> np.ndarray:
    X = X.copy()
    X[np.random.default_rng(seed).random(X.shape) < 0.05] = np.nan
    return X


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """A single-output and a 3-quantile booster, trained with some missing values."""
    d = tmp_path_factory.mktemp("models")
    X, y = _data(20_000, 0)
    X = _with_missing(X, 1)
    single = xgb.train({"max_depth": 5, "eta": 0.2, "nthread": 1}, xgb.DMatrix(X, y), 40)
    single.save_model(str(d / "single.ubj"))
    quant = xgb.train({"max_depth": 4, "eta": 0.2, "nthread": 1, "objective": "reg:quantileerror",
                       "quantile_alpha": [0.05, 0.5, 0.95]}, xgb.DMatrix(X, y), 20)
    quant.save_model(str(d / "quant.json"))  # JSON on purpose: both model formats must load
    return {"single": d / "single.ubj", "quant": d / "quant.json"}


@pytest.fixture(scope="session")
def lib_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lib")


@pytest.fixture(scope="session")
def eval_rows():
    X, _ = _data(100_000, 2)
    return _with_missing(X, 3)


@pytest.mark.parametrize("layout", ["array", "tl2cgen"])
@pytest.mark.parametrize("which", ["single", "quant"])
def test_compiled_matches_xgboost(models, lib_dir, eval_rows, which, layout):
    # "quant" also guards our fix of TL2cgen 1.0 adding base_scores[0] to every quantile
    ref = XGBoostBackend(models[which]).predict(eval_rows)
    comp = load_backend(models[which], "compiled", lib_dir=lib_dir, options=CompileOptions(layout=layout))
    out = comp.predict(eval_rows)
    assert out.shape == ref.shape == ((len(eval_rows),) if which == "single" else (len(eval_rows), 3))
    assert out.dtype == np.float32
    assert np.max(np.abs(out - ref)) < TOL_NM
    # NaN-free input takes the kernel's fast path (no missing-value term)
    clean, _ = _data(50_000, 4)
    assert np.max(np.abs(comp.predict(clean) - XGBoostBackend(models[which]).predict(clean))) < TOL_NM
    # the multi-quantile outputs must really differ per alpha (not one column copied)
    if which == "quant":
        assert np.mean(out[:, 0] < out[:, 2]) > 0.9


def test_threads_and_batch_slicing_do_not_change_results(models, lib_dir, eval_rows):
    lib = ensure_library(models["single"], lib_dir=lib_dir)
    one = CompiledBackend(lib, nthread=1).predict(eval_rows)
    two = CompiledBackend(lib, nthread=2).predict(eval_rows)
    np.testing.assert_array_equal(one, two)
    # odd sizes that do not fill a row block, single rows and a non-contiguous float64 input
    for n in (1, 7, 65, 1001):
        np.testing.assert_array_equal(CompiledBackend(lib).predict(eval_rows[:n]), one[:n])
    strided = np.asfortranarray(eval_rows[:500].astype(np.float64))
    np.testing.assert_array_equal(CompiledBackend(lib).predict(strided), one[:500])


def test_vector_walk_sums_as_the_scalar_walk_bit_for_bit(models, lib_dir, eval_rows, tmp_path):
    # depth 6 with uneven trees (leaves above the last level are padded in both walks), and depth 8
    # (levels past 32 nodes and the leaves gathered instead of permuted from registers)
    X, y = _data(20_000, 5)
    for name, depth, child, rounds in (("deep", 6, 200, 25), ("deeper", 8, 1, 8)):
        xgb.train({"max_depth": depth, "eta": 0.3, "nthread": 1, "min_child_weight": child},
                  xgb.DMatrix(_with_missing(X, 6), y), rounds).save_model(str(tmp_path / f"{name}.ubj"))
    # the switch exists only where the walk was built: the array layout unless told otherwise
    for options in (CompileOptions(vector=False), CompileOptions(layout="tl2cgen")):
        b = CompiledBackend(ensure_library(models["single"], options, lib_dir=lib_dir))
        assert not b.vector_built and not b.vector and not b.set_vector(True)
    clean, _ = _data(3000, 7)
    on = False
    for path in (models["single"], models["quant"], tmp_path / "deep.ubj", tmp_path / "deeper.ubj"):
        # rows whose features sit exactly on the model's split values: x == threshold goes right
        splits = xgb.Booster(model_file=str(path)).trees_to_dataframe().query("Feature != 'Leaf'")
        rng = np.random.default_rng(8)
        edge = clean.copy()
        for f, g in splits.groupby("Feature"):
            edge[:, int(f[1:])] = rng.choice(g["Split"].to_numpy(np.float32), len(edge))
        b = CompiledBackend(ensure_library(path, CompileOptions(), lib_dir=lib_dir))
        assert b.vector_built
        assert not b.set_vector(False) and not b.vector
        sets = (eval_rows, clean, edge)
        scalar = {n: [b.predict(x[:n]) for x in sets] for n in (1, 15, 16, 17, 64, 65, 100, 1001, 3000)}
        for x in (eval_rows[:5000], edge):
            assert np.max(np.abs(b.predict(x) - XGBoostBackend(path).predict(x))) < TOL_NM
        on = b.set_vector(True)  # True where the CPU has AVX-512F, else the scalar walk stays
        assert b.vector == on
        for n, before in scalar.items():  # whole vectors, a tail of scalar rows, both
            for x, y in zip(sets, before):
                assert np.array_equal(b.predict(x[:n]).view(np.uint32), y.view(np.uint32)), (path.name, n)
        assert np.array_equal(CompiledBackend(b.library, nthread=2).predict(eval_rows), b.predict(eval_rows))
    if not on:
        pytest.skip("no AVX-512F on this CPU: only the scalar walk ran (the comparison above is scalar vs scalar)")


def test_vector_walk_is_off_with_the_environment_switch(models, lib_dir):
    lib = ensure_library(models["single"], CompileOptions(), lib_dir=lib_dir)
    code = ("import sys; from streamer.core.backends import CompiledBackend; "
            f"print(int(CompiledBackend({str(lib)!r}).vector))")
    got = {v: subprocess.run([sys.executable, "-c", code], env={**os.environ, "STREAMER_TREES_VECTOR": v},
                             capture_output=True, text=True, check=True).stdout.strip() for v in ("0", "1")}
    assert got["0"] == "0"
    assert got["1"] == str(int(CompiledBackend(lib).set_vector(True)))


def test_empty_batch_and_bad_shape(models, lib_dir):
    for b in (load_backend(models["single"], "xgboost"), load_backend(models["single"], "compiled", lib_dir=lib_dir)):
        assert b.predict(np.zeros((0, N_FEATURE), np.float32)).shape == (0,)
        with pytest.raises(ValueError, match="shape"):
            b.predict(np.zeros((3, N_FEATURE + 1), np.float32))
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend(models["single"], "gpu")
    with pytest.raises(FileNotFoundError):
        load_backend(models["single"].with_name("nope.ubj"), "xgboost")


def test_library_cache_is_reused_and_keyed_by_model_and_options(models, lib_dir, tmp_path):
    lib = ensure_library(models["single"], lib_dir=lib_dir)
    mtime = lib.stat().st_mtime_ns
    assert ensure_library(models["single"], lib_dir=lib_dir) == lib
    assert lib.stat().st_mtime_ns == mtime  # not rebuilt
    info = json.loads(lib.with_name(lib.name + ".json").read_text())
    assert info["compile_s"] > 0 and info["num_tree"] == 40
    # another option set or another model gets another name; build=False never compiles
    assert library_path(models["single"], CompileOptions(block_rows=32), lib_dir) != lib
    assert library_path(models["quant"], lib_dir=lib_dir) != lib
    with pytest.raises(FileNotFoundError, match="streamer compile"):
        ensure_library(models["single"], CompileOptions(block_rows=32), lib_dir=tmp_path, build=False)


def test_annotated_and_row_by_row_builds_keep_parity(models, lib_dir, eval_rows):
    ref = XGBoostBackend(models["single"]).predict(eval_rows)
    for opts in (CompileOptions(layout="tl2cgen", annotate=True, openmp=False),
                 CompileOptions(layout="tl2cgen", trees_per_unit=1, block_rows=1),
                 CompileOptions(interleave=3, block_rows=10)):
        out = CompiledBackend(ensure_library(models["single"], opts, lib_dir)).predict(eval_rows)
        assert np.max(np.abs(out - ref)) < TOL_NM


def test_auto_routes_by_stored_crossover(models, lib_dir):
    auto = load_backend(models["single"], "auto", lib_dir=lib_dir)
    assert isinstance(auto, AutoBackend)
    lib = ensure_library(models["single"], lib_dir=lib_dir)
    meta_path = lib.with_name(lib.name + ".json")
    meta = json.loads(meta_path.read_text())
    try:
        meta["crossover"] = {"1t": {"xgboost_from": 1000, "us_per_row": []}}
        meta_path.write_text(json.dumps(meta))
        auto = load_backend(models["single"], "auto", lib_dir=lib_dir)
        assert auto.backend_for(1).name.startswith("compiled")
        assert auto.backend_for(999).name.startswith("compiled")
        assert auto.backend_for(1000).name.startswith("xgboost")
        X = random_features(models["single"], 1500, seed=0)
        np.testing.assert_allclose(auto.predict(X), auto.predict(X[:999].copy()).tolist() + auto.predict(X[999:]).tolist(),
                                   atol=TOL_NM)
        # a real measurement writes a crossover entry with timings for every size
        cross = write_crossover(lib, models["single"], sizes=(1, 100))
        assert [r["n"] for r in cross["1t"]["us_per_row"]] == [1, 100]
        assert all(r["xgboost"] > 0 and r["compiled"] > 0 for r in cross["1t"]["us_per_row"])
    finally:
        meta.pop("crossover", None)
        meta_path.write_text(json.dumps(meta))


def test_cli_compiles_every_booster_of_a_manifest(models, lib_dir, tmp_path, capsys):
    bundle = tmp_path / "toy" / "static"  # compiled_models/<modality>/<model>/
    bundle.mkdir(parents=True)
    for name in ("single.ubj", "quant.json"):
        (bundle / name).write_bytes(models[name.split(".")[0]].read_bytes())
    (bundle / "manifest.json").write_text(json.dumps({"boosters": {"point": "single.ubj", "quantiles": "quant.json"},
                                                      "sha256": "x"}))
    rc = cli.main(["compile", "--models-dir", str(tmp_path), "--lib-dir", str(lib_dir),
                   "--no-calibrate", "--parity-rows", "20000"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count("parity max|diff|") == 2 and "FAILED" not in out
    assert out.count(" walk") == 2  # which walk the workers take
    assert ensure_library(bundle / "quant.json", lib_dir=lib_dir, build=False).is_file()
    # --prune keeps exactly the libraries of the current bundles
    own = tmp_path / "own_lib"
    assert cli.main(["compile", str(bundle), "--lib-dir", str(own), "--no-calibrate", "--parity-rows", "0"]) == 0
    stale = own / "0123456789abcdef-0000000000-00000000.so"
    stale.write_bytes(b"old")
    assert cli.main(["compile", str(bundle), "--lib-dir", str(own), "--parity-rows", "0", "--prune"]) == 0
    assert not stale.exists() and len(list(own.glob("*.so"))) == 2
    capsys.readouterr()
    (bundle / "manifest.json").write_text(json.dumps({"boosters": {"point": "single.ubj"},
                                                      "sha256": {"single.ubj": "0" * 64}}))
    assert cli.main(["compile", str(bundle), "--lib-dir", str(lib_dir)]) == 2
    assert "sha256 does not match" in capsys.readouterr().err
    # a modality's manifest may name its boosters its own way: then every .ubj of the bundle is compiled
    (bundle / "manifest.json").write_text(json.dumps({"sha256": "x"}))
    assert cli.main(["compile", str(bundle), "--lib-dir", str(lib_dir), "--no-calibrate", "--parity-rows", "100"]) == 0
    assert capsys.readouterr().out.count("parity max|diff|") == 1  # single.ubj (quant.json is not .ubj)
    empty = tmp_path / "toy" / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text(json.dumps({"sha256": "x"}))
    assert cli.main(["compile", str(empty), "--lib-dir", str(lib_dir)]) == 2
    assert "no 'boosters' mapping and no .ubj" in capsys.readouterr().err


def test_concurrent_loaders_build_once(models, tmp_path):
    """Several workers starting together: one builds, the others wait and load the same file."""
    import multiprocessing as mp

    ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
    with ctx.Pool(2) as pool:
        libs = pool.starmap(ensure_library, [(models["quant"], None, tmp_path)] * 2)
    assert libs[0] == libs[1] and libs[0].is_file()
    assert [p.name for p in tmp_path.glob("*.so")] == [libs[0].name]


def test_compile_cli_missing_ok_and_bad_options(tmp_path, capsys):
    assert cli.main(["compile", "--models-dir", str(tmp_path), "--missing-ok"]) == 0
    assert "nothing to compile" in capsys.readouterr().out
    assert cli.main(["compile", "--models-dir", str(tmp_path)]) == 2  # no bundles, not ok
    assert "no model bundles" in capsys.readouterr().err
    with pytest.raises(ValueError, match="layout"):
        CompileOptions(layout="sparse")
    with pytest.raises(ValueError, match="annotate"):
        CompileOptions(annotate=True)  # branch hints mean nothing to the branch-free layout


def test_cover_annotation_equals_annotate_branch_on_training_data(tmp_path):
    """Our data-free branch annotation (XGBoost node cover) is what TL2cgen counts on the data."""
    import tl2cgen
    import treelite

    from streamer.core.compile import _annotation

    X, y = _data(3000, 5)
    booster = xgb.train({"max_depth": 4, "nthread": 1}, xgb.DMatrix(X, y), 5)  # no subsampling
    booster.save_model(str(tmp_path / "m.ubj"))
    tl_model = treelite.frontend.load_xgboost_model(str(tmp_path / "m.ubj"))
    tl2cgen.annotate_branch(tl_model, tl2cgen.DMatrix(X), str(tmp_path / "from_data.json"))
    ours = _annotation(tmp_path / "m.ubj", tl_model, tmp_path / "from_cover.json")
    assert json.loads(ours.read_text()) == json.loads((tmp_path / "from_data.json").read_text())


def test_default_library_dir_follows_the_bundle_not_the_cwd(tmp_path, monkeypatch):
    from streamer.core.compile import default_lib_dir

    monkeypatch.delenv("STREAMER_LIB_DIR", raising=False)
    model = tmp_path / "repo" / "compiled_models" / "static" / "point.ubj"
    assert default_lib_dir(model) == (tmp_path / "repo" / "compiled_models" / "lib").resolve()
    monkeypatch.setenv("STREAMER_LIB_DIR", str(tmp_path / "elsewhere"))
    assert default_lib_dir(model) == tmp_path / "elsewhere"


def test_default_build_falls_back_to_tl2cgen_for_trees_too_deep_for_arrays(tmp_path):
    from streamer.core.compile import MAX_ARRAY_DEPTH

    rng = np.random.default_rng(6)
    X = rng.random((20_000, 3), dtype=np.float32)
    y = np.sin(40 * X[:, 0]) + np.cos(37 * X[:, 1]) + 0.1 * X[:, 2]  # needs very deep splits
    depth = MAX_ARRAY_DEPTH + 2
    booster = xgb.train({"max_depth": depth, "min_child_weight": 0, "lambda": 0, "nthread": 1},
                        xgb.DMatrix(X, y), 1)
    path = tmp_path / "deep.ubj"
    booster.save_model(str(path))
    with pytest.raises(ValueError, match="layout 'tl2cgen'"):
        ensure_library(path, CompileOptions(), tmp_path / "lib")  # explicit array layout: clear error
    lib = ensure_library(path, lib_dir=tmp_path / "lib")
    info = json.loads(lib.with_name(lib.name + ".json").read_text())
    assert info["options"]["layout"] == "tl2cgen" and info["depth"] > MAX_ARRAY_DEPTH
    assert ensure_library(path, lib_dir=tmp_path / "lib") == lib  # remembered, not retried
    out = CompiledBackend(lib).predict(X)
    assert np.max(np.abs(out - booster.inplace_predict(X))) < TOL_NM


def test_install_step_compiles_every_shipped_booster_of_every_modality(tmp_path, capsys):
    """`streamer compile --missing-ok` (the Makefile's install step) finds compiled_models/<modality>/<model>/."""
    root = Path(__file__).resolve().parents[2] / "compiled_models"
    shipped = sorted(root.glob("*/*/*.ubj"))
    assert {p.parts[-3] for p in shipped} >= {"minflux"}
    assert cli.main(["compile", "--missing-ok", "--models-dir", str(root), "--lib-dir", str(tmp_path),
                     "--no-calibrate", "--parity-rows", "1000"]) == 0
    out = capsys.readouterr().out
    assert out.count("parity max|diff|") == len(shipped) and "FAILED" not in out
