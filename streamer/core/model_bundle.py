"""On-disk model bundle: ``compiled_models/<regime>/manifest.json`` plus portable XGBoost boosters.

Manifest keys (the contract other modules build against): ``regime``, ``feature_set``,
``feature_names``, ``boosters`` {role: filename} with the role ``point`` (mean distance, nm;
the interval needs no booster), ``calibration`` (the stored label-conditional conformal quantiles,
see :mod:`streamer.conformal`), ``data`` (seed, sizes, simulator parameters),
``training`` (booster parameters, rounds), ``metrics``, ``flags`` (photon range the model was
trained on) and ``sha256`` {filename: hash}. Boosters are XGBoost UBJSON (``.ubj``).
"""

from __future__ import annotations

import json
from pathlib import Path

from .compile import file_sha256

#: the bundles shipped with the repository
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[2] / "compiled_models"
MANIFEST = "manifest.json"
ROLES = ("point",)


def bundle_dir(regime_or_path: str | Path) -> Path:
    """A bundle directory: an existing path, or a regime name under :data:`DEFAULT_MODELS_DIR`."""
    p = Path(regime_or_path)
    if p.is_dir() and (p / MANIFEST).is_file():
        return p
    return DEFAULT_MODELS_DIR / str(regime_or_path)


def save_bundle(out_dir: Path, manifest: dict, boosters: dict, tables: dict | None = None) -> dict:
    """Write boosters ({role: xgboost.Booster}) as ``<role>.ubj``, ``tables`` ({name: {key: array}})
    as compressed ``<name>.npz`` and the manifest with every file's hash; returns the manifest as written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, hashes = {}, {}
    for role, booster in boosters.items():
        name = f"{role}.ubj"
        booster.save_model(str(out_dir / name))
        files[role] = name
        hashes[name] = file_sha256(out_dir / name)
    for table, arrays in (tables or {}).items():
        name, hashes[name] = write_table(out_dir, table, arrays)
    manifest = {**manifest, "boosters": files, "sha256": hashes}
    write_manifest(out_dir, manifest)
    return manifest


def write_table(out_dir: Path, table: str, arrays: dict) -> tuple[str, str]:
    """Write ``arrays`` as compressed ``<table>.npz`` in ``out_dir``; returns (file name, sha256)."""
    import numpy as np

    name = f"{table}.npz"
    np.savez_compressed(Path(out_dir) / name, **arrays)
    return name, file_sha256(Path(out_dir) / name)


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """Write ``manifest`` (its keys starting with ``_``, which :func:`load_manifest` adds, left out)."""
    body = {k: v for k, v in manifest.items() if not k.startswith("_")}
    (Path(out_dir) / MANIFEST).write_text(dumps(body) + "\n")


def dumps(obj, indent: int = 2, _level: int = 0) -> str:
    """JSON as ``json.dumps(obj, indent=indent)`` reads it, but a list of scalars on one line: stored
    tables (conformal quantiles per cell and bin) would otherwise take a line per number, ~3x the bytes."""
    pad, inner = " " * (indent * _level), " " * (indent * (_level + 1))
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, indent, _level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)) and obj:
        if all(not isinstance(v, (dict, list, tuple)) for v in obj):
            return json.dumps(list(obj))
        return "[\n" + ",\n".join(inner + dumps(v, indent, _level + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj)


def load_manifest(directory: str | Path, verify: bool = True) -> dict:
    """Read a bundle's manifest; with ``verify`` check every booster file against its sha256."""
    directory = bundle_dir(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no model bundle at {directory} (missing {MANIFEST}); run `streamer train`")
    manifest = json.loads(path.read_text())
    missing = {"regime", "feature_names", "boosters", "calibration", "sha256"} - set(manifest)
    if missing:
        raise ValueError(f"{path}: manifest lacks {sorted(missing)}")
    for role in ROLES:
        if role not in manifest["boosters"]:
            raise ValueError(f"{path}: no booster for role {role!r}")
    if verify:
        for name, digest in manifest["sha256"].items():
            f = directory / name
            if not f.is_file():
                raise FileNotFoundError(f"{f} listed in {path} is missing")
            if file_sha256(f) != digest:
                raise ValueError(f"{f}: sha256 does not match the manifest (file changed after training)")
    manifest["_dir"] = str(directory)
    return manifest


def model_id(manifest: dict) -> str:
    """Short identifier carried with every result: regime + hash prefix of the point booster."""
    point = manifest["boosters"]["point"]
    return f"xgb-{manifest['regime']}-{manifest['sha256'][point][:12]}"
