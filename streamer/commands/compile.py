"""``streamer compile``: build native libraries for trained boosters (once per machine)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..core.compile import file_sha256

HELP = ("compile trained XGBoost boosters to native shared libraries (cached in compiled_models/lib); "
        "workers load the default build, other options are for experiments")

PARITY_TOLERANCE_NM = 1e-3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", type=Path,
                   help="model files (.ubj/.json), manifest.json files or bundle directories "
                        "(default: every compiled_models/<modality>/<model>/manifest.json)")
    p.add_argument("--models-dir", type=Path, default=Path("compiled_models"),
                   help="where bundles are looked for when no paths are given")
    p.add_argument("--lib-dir", type=Path, default=None,
                   help="library cache (default: compiled_models/lib of the bundle; $STREAMER_LIB_DIR overrides)")
    p.add_argument("--march", default=None, help="-march value, e.g. native (default: compiler default)")
    p.add_argument("--trees-per-unit", type=int, default=None, help="tl2cgen layout: trees per C function")
    p.add_argument("--block-rows", type=int, default=None, help="rows per block (default 64)")
    p.add_argument("--layout", choices=("array", "tl2cgen"), default=None,
                   help="array: branch-free complete-tree arrays (default); tl2cgen: TL2cgen's if/else code")
    p.add_argument("--annotate", action="store_true",
                   help="tl2cgen layout: branch hints from the model's node cover")
    p.add_argument("--force", action="store_true", help="rebuild even if a cached library exists")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip measuring the xgboost/compiled crossover used by the auto backend")
    p.add_argument("--prune", action="store_true",
                   help="afterwards delete other libraries in the cache (old models, versions or options)")
    p.add_argument("--missing-ok", action="store_true",
                   help="exit 0 without doing anything when no model bundles exist (install step)")
    p.add_argument("--parity-rows", type=int, default=100_000,
                   help="random rows for the compiled-vs-xgboost parity check (0 = skip)")


def model_files(paths: list[Path], models_dir: Path) -> list[Path]:
    """Expand model files, manifests and bundle directories into booster files."""
    if not paths:
        paths = sorted(models_dir.glob("*/*/manifest.json"))  # compiled_models/<modality>/<model>/
        if not paths:
            raise FileNotFoundError(f"no model bundles (<modality>/<model>/manifest.json) under {models_dir}; "
                                    "train models first or pass model files")
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            p = p / "manifest.json"
        if not p.exists():
            raise FileNotFoundError(f"not found: {p}")
        if p.name == "manifest.json":
            manifest = json.loads(p.read_text())
            boosters = manifest.get("boosters")
            if not isinstance(boosters, dict) or not boosters:
                # a modality's bundle may name its boosters its own way: every XGBoost file in it
                boosters = {f.stem: f.name for f in sorted(p.parent.glob("*.ubj"))}
                if not boosters:
                    raise ValueError(f"{p}: bundle has no 'boosters' mapping and no .ubj booster files")
            digests = manifest.get("sha256") if isinstance(manifest.get("sha256"), dict) else {}
            for name in boosters.values():
                booster = p.parent / name
                if name in digests and booster.is_file() and file_sha256(booster) != digests[name]:
                    raise ValueError(f"{booster}: sha256 does not match {p} (bundle modified or half-written)")
                out.append(booster)
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def _candidates(model: Path, options, lib_dir) -> list[Path]:
    from ..core.compile import CompileOptions, library_path

    opts = [options] if options else [CompileOptions(), CompileOptions(layout="tl2cgen")]
    return [library_path(model, o, lib_dir) for o in opts]


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..core.backends import CompiledBackend, XGBoostBackend, random_features, write_crossover
    from ..core.compile import CompileOptions, ensure_library

    overrides = {k: v for k, v in {"layout": args.layout, "march": args.march,
                                   "trees_per_unit": args.trees_per_unit,
                                   "block_rows": args.block_rows}.items() if v is not None}
    # no option given = the default build workers load (with its automatic layout fallback)
    options = CompileOptions(annotate=args.annotate, **overrides) if overrides or args.annotate else None
    if args.missing_ok and not args.paths and not any(args.models_dir.glob("*/*/manifest.json")):
        print(f"streamer compile: no model bundles under {args.models_dir}; nothing to compile")
        return 0
    failed = 0
    kept: set[Path] = set()
    for model in model_files(args.paths, args.models_dir):
        if not model.is_file():
            raise FileNotFoundError(f"booster listed in manifest not found: {model}")
        t0 = time.perf_counter()
        if args.force:
            for stale in _candidates(model, options, args.lib_dir):
                for f in (stale, Path(str(stale) + ".unsupported")):
                    f.unlink(missing_ok=True)
        before = {p: p.stat().st_mtime_ns for p in _candidates(model, options, args.lib_dir) if p.is_file()}
        lib = ensure_library(model, options, args.lib_dir,
                             on_built=None if args.no_calibrate else (lambda built, m=model: write_crossover(built, m)))
        kept.add(lib.resolve())
        if lib in before and before[lib] == lib.stat().st_mtime_ns:
            status = "cached"
        else:
            info = json.loads(Path(str(lib) + ".json").read_text())
            status = (f"built in {info['compile_s']:.1f} s ({info['num_tree']} trees, depth {info['depth']}, "
                      f"layout {info['options']['layout']})")
        compiled = CompiledBackend(lib)
        walk = ("AVX-512 walk" if compiled.vector
                else "scalar walk (no AVX-512F here)" if compiled.vector_built else "scalar walk")
        line = f"{model} -> {lib}: {status}; {walk}"
        if args.parity_rows > 0:  # with the walk the workers will take
            X = random_features(model, args.parity_rows, seed=7)
            diff = float(np.max(np.abs(compiled.predict(X) - XGBoostBackend(model).predict(X))))
            ok = diff < PARITY_TOLERANCE_NM
            failed += not ok
            line += f"; parity max|diff| {diff:.2e} on {args.parity_rows} rows {'ok' if ok else 'FAILED'}"
        meta_path = Path(str(lib) + ".json")
        cross = json.loads(meta_path.read_text()).get("crossover", {}).get("1t") if meta_path.is_file() else None
        if cross:
            xgb_from = cross["xgboost_from"]
            line += f"; auto: xgboost from n={xgb_from}" if xgb_from else "; auto: compiled at all sizes"
        print(line + f" [{time.perf_counter() - t0:.1f} s]", flush=True)
    if args.prune:
        for lib_dir in {p.parent for p in kept}:
            for old in lib_dir.glob("*.so"):
                if old.resolve() not in kept:
                    for f in (old, Path(str(old) + ".json"), lib_dir / f".{old.name}.lock"):
                        f.unlink(missing_ok=True)
                    print(f"pruned {old}")
    return 1 if failed else 0
