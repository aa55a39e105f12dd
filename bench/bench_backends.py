"""Micro-benchmark: us/row of tree-ensemble backends x batch sizes, side by side.

    .venv/bin/python bench/bench_backends.py                      # reference models, all sizes
    .venv/bin/python bench/bench_backends.py --model compiled_models/static/xgb.ubj

Backends: XGBoost ``inplace_predict`` (1 thread / all threads); stock TL2cgen
(``tl2cgen.Predictor`` + ``tl2cgen.DMatrix`` on TL2cgen's if/else code, the path first measured
~5x slower than XGBoost on large batches); the same TL2cgen code driven by our blocked batch
entry point; and the default compiled layout (branch-free complete-tree arrays, 1 thread / all
threads, plus a ``-march=native`` build). Inputs are simulated static-regime features, not
random numbers, so branch behaviour is realistic. Without ``--model``, reference boosters
(500 trees depth 8 and 150 trees depth 6 on the ``all`` feature set) are trained once and cached
in ``data/bench_models``. Timings are best-of-repeats, backends taking turns per batch size.

Writes ``bench/results/backends-<utc>.json`` and, with ``--write-results``, replaces the
"## Backend micro-benchmark" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.core.backends import CompiledBackend, XGBoostBackend  # noqa: E402
from streamer.core.backends import measure_us_per_row  # noqa: E402
from streamer.core.compile import CompileOptions, ensure_library  # noqa: E402
from streamer.modalities.minflux.features import batch_features, feature_names  # noqa: E402
from streamer.core.results_md import write_sections  # noqa: E402
from streamer.modalities.minflux.simulate import simulate  # noqa: E402

SIZES = (1, 10, 100, 1000, 10_000, 100_000)
SECTION = "## Backend micro-benchmark"
REFERENCE_MODELS = {"t500d8": (500, 8), "t150d6": (150, 6)}
LEGEND = ("Rows: *xgboost* = `Booster.inplace_predict`; *tl2cgen stock* = `tl2cgen.Predictor` + "
          "`tl2cgen.DMatrix` on TL2cgen's if/else code; *tl2cgen blocked* = the same code through our "
          "blocked batch entry point; *compiled* = the default `array` layout that workers load; "
          "Nt = threads. Inputs: simulated static-regime features. Analysis: README, section "
          "\"Compiled inference\".")


def simulated_features(n: int, seed: int, names) -> tuple[np.ndarray, np.ndarray]:
    rec = simulate("static", max(1, n // 100), 100, seed)
    return batch_features(rec.tuples, names)[:n], rec.truth["d_nm"][:n].astype(np.float32)


def train_reference(path: Path, n_trees: int, depth: int, feature_set: str = "all",
                    n_rows: int = 200_000, seed: int = 1) -> Path:
    """Train (once) a distance regressor of the given size on simulated static rulers."""
    import xgboost as xgb

    if path.is_file():
        return path
    names = feature_names(feature_set)
    X, y = simulated_features(n_rows, seed, names)
    booster = xgb.train({"max_depth": depth, "eta": 0.05, "tree_method": "hist", "nthread": 0,
                         "subsample": 0.8}, xgb.DMatrix(X, y, feature_names=list(names)), n_trees)
    path.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path))
    return path


def bundle_boosters() -> list[Path]:
    """Boosters of the trained bundles in compiled_models/*/manifest.json (if any)."""
    out = []
    for manifest in sorted((ROOT / "compiled_models").glob("*/manifest.json")):
        out += [manifest.parent / name for name in json.loads(manifest.read_text()).get("boosters", {}).values()]
    return out


class StockTL2cgen:
    """The stock TL2cgen Python path: DMatrix construction + Predictor.predict per batch."""

    def __init__(self, lib: Path, nthread: int) -> None:
        import tl2cgen

        self._tl2cgen = tl2cgen
        self.predictor = tl2cgen.Predictor(str(lib), nthread=nthread)
        self.name = f"tl2cgen-stock[{nthread}t]"

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predictor.predict(self._tl2cgen.DMatrix(X)).reshape(len(X), -1)


def build_backends(model: Path, lib_dir: Path, threads: int, variants: list[str]) -> dict:
    """name -> backend; every library is built once and cached in ``lib_dir``."""
    arr = ensure_library(model, CompileOptions(), lib_dir)
    out = {
        "xgboost 1t": XGBoostBackend(model, nthread=1),
        f"xgboost {threads}t": XGBoostBackend(model, nthread=threads),
    }
    if "tl2cgen" in variants:
        tl = ensure_library(model, CompileOptions(layout="tl2cgen"), lib_dir)
        out["tl2cgen stock 1t"] = StockTL2cgen(tl, 1)
        out[f"tl2cgen stock {threads}t"] = StockTL2cgen(tl, threads)
        out["tl2cgen blocked 1t"] = CompiledBackend(tl, nthread=1)
    if "annotate" in variants:
        lib = ensure_library(model, CompileOptions(layout="tl2cgen", annotate=True), lib_dir)
        out["tl2cgen blocked annotated 1t"] = CompiledBackend(lib, nthread=1)
    out["compiled 1t"] = CompiledBackend(arr, nthread=1)
    out[f"compiled {threads}t"] = CompiledBackend(arr, nthread=threads)
    if "march" in variants:
        lib = ensure_library(model, CompileOptions(march="native"), lib_dir)
        out["compiled -march=native 1t"] = CompiledBackend(lib, nthread=1)
    return out


def measure_table(backends: dict, X: np.ndarray, sizes, rounds: int, min_time: float) -> dict:
    """Best us/row per backend and size; backends take turns so load spikes hit all alike."""
    table: dict = {name: {} for name in backends}
    for n in sizes:
        for _ in range(rounds):
            for name, b in backends.items():
                v = measure_us_per_row(b, X[:n], min_time_s=min_time / rounds)
                table[name][str(n)] = min(table[name].get(str(n), float("inf")), v)
        print(f"n={n}: " + ", ".join(f"{k} {v[str(n)]:.3g}" for k, v in table.items()), flush=True)
    return table


def model_feature_names(model: Path, booster) -> list[str]:
    """Feature names stored in the booster, else in the bundle manifest beside it."""
    if booster.feature_names:
        return list(booster.feature_names)
    manifest = model.parent / "manifest.json"
    if manifest.is_file() and "feature_names" in json.loads(manifest.read_text()):
        return json.loads(manifest.read_text())["feature_names"]
    raise ValueError(f"{model}: no feature names in the booster or a manifest beside it")


def model_depth(model: Path) -> int:
    import treelite

    from streamer.core.compile import _tree_depth

    tl_model = treelite.frontend.load_xgboost_model(str(model))
    return max(_tree_depth(tl_model.get_tree_accessor(i)) for i in range(tl_model.num_tree))


def model_label(model: Path) -> str:
    return f"{model.parent.name}/{model.stem}" if model.parent.parent.name == "compiled_models" else model.stem


def markdown(results: list[dict], sizes) -> str:
    lines = []
    for res in results:
        lines.append(f"**{res['model_name']}** ({res['num_tree']} trees, depth {res['depth']}, "
                     f"{res['num_feature']} features; array-layout build {res['compiled_build']['compile_s']:.1f} s; parity max |compiled - xgboost| = "
                     f"{res['parity_max_abs']:.2e} nm over {res['parity_rows']} rows)\n")
        lines.append("| backend | " + " | ".join(f"n={n:,}" for n in sizes) + " |")
        lines.append("|---|" + "---:|" * len(sizes))
        for name, row in res["us_per_row"].items():
            lines.append(f"| {name} | " + " | ".join(f"{row[str(n)]:.3g}" for n in sizes) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", type=Path, help="XGBoost model file(s); default: reference models")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the multi-thread rows")
    ap.add_argument("--variants", nargs="*", default=["tl2cgen", "march"],
                    help="extra builds: tl2cgen (stock TL2cgen code, slow to compile), annotate, march")
    ap.add_argument("--rounds", type=int, default=3, help="turns per size (best of all turns is kept)")
    ap.add_argument("--lib-dir", type=Path, default=ROOT / "data" / "bench_models" / "lib",
                    help="library cache of the benchmark builds (kept apart from the workers' cache)")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per cell, over all rounds")
    ap.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md")
    args = ap.parse_args(argv)

    models = args.model or [train_reference(ROOT / "data" / "bench_models" / f"{k}.ubj", *v)
                            for k, v in REFERENCE_MODELS.items()] + bundle_boosters()
    results = []
    for model in models:
        import xgboost as xgb

        booster = xgb.Booster(model_file=str(model))
        names = model_feature_names(model, booster)
        X, _ = simulated_features(max(100_000, *args.sizes), seed=99, names=names)  # parity on >= 100k rows
        backends = build_backends(model, args.lib_dir, args.threads, args.variants)
        ref = backends["xgboost 1t"].predict(X)
        parity = {name: float(np.max(np.abs(b.predict(X).reshape(ref.shape) - ref)))
                  for name, b in backends.items()}
        table = measure_table(backends, X, args.sizes, args.rounds, args.min_time)
        lib_info = json.loads(Path(str(backends["compiled 1t"].library) + ".json").read_text())
        depth = model_depth(model)
        results.append({
            "model": str(model), "model_name": model_label(model), "num_tree": booster.num_boosted_rounds(),
            "depth": depth, "num_feature": booster.num_features(), "parity_rows": len(X),
            "parity_max_abs": max(v for k, v in parity.items() if not k.startswith("xgboost")),
            "parity_by_backend": parity, "us_per_row": table, "compiled_build": lib_info,
        })
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = ROOT / "bench" / "results" / f"backends-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"utc": stamp, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "sizes": args.sizes, "results": results, "command": " ".join(sys.argv)}
    out.write_text(json.dumps(meta, indent=1))
    md = markdown(results, args.sizes)
    print(md)
    if args.write_results:
        cmd = "`.venv/bin/python bench/bench_backends.py " + " ".join(sys.argv[1:]) + "`"
        body = (f"{SECTION}\n\nus/row (best of repeats, lower is better) on this machine "
                f"({os.cpu_count()} cores), {stamp}. Command: {cmd}; raw: `{out.relative_to(ROOT)}`.\n\n"
                f"{LEGEND}\n\n{md}")
        write_sections(ROOT / "bench" / "RESULTS.md", {SECTION: body})
    return 0


if __name__ == "__main__":
    sys.exit(main())
