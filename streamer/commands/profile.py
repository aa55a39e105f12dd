"""``streamer profile show|new|validate``: instrument profiles (see :mod:`streamer.core.profile`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..core import profile as prof
from ..core import registry

HELP = "instrument profiles: show one (or the nominal instrument), write a new one, validate files"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="print a profile (default: the modality's nominal instrument), its "
                                       "parameters and the bundles trained for it")
    show.add_argument("file", nargs="?", help="profile (.toml); omit for --modality's nominal instrument")
    show.add_argument("--models-dir", default=None)
    new = sub.add_parser("new", help="write a profile of --modality: the nominal values, changed by --set")
    new.add_argument("file", help="where to write it (.toml)")
    new.add_argument("--name", default=None, help="instrument name (default: the file's stem)")
    new.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a parameter value (repeatable)")
    new.add_argument("--description", default="")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    val = sub.add_parser("validate", help="check profile files; exit 1 if any is not usable")
    val.add_argument("files", nargs="+")
    for action in (show, new, val):  # --modality also after the action
        action.add_argument("--modality", default=argparse.SUPPRESS, choices=registry.names())


def _bundles_for(hash_: str, modality: str, models_dir: str | None) -> list[str]:
    from ..core.model_bundle import DEFAULT_MODELS_DIR

    base = Path(models_dir or DEFAULT_MODELS_DIR) / modality
    out = []
    for m in sorted(base.glob("*/manifest.json")):
        entry = json.loads(m.read_text()).get("instrument") or {}
        if entry.get("hash") == hash_:
            out.append(str(m.parent))
    return out


def run(args: argparse.Namespace) -> int:
    mod = registry.get(args.modality)
    if args.action == "validate":
        bad = 0
        for f in args.files:
            try:
                p = prof.load(f, registry.get)
                print(f"{f}: ok ({p.modality} instrument {p.name!r}, hash {p.hash})")
            except prof.ProfileError as exc:
                print(f"{f}: {exc}")
                bad += 1
        return 1 if bad else 0
    if args.action == "show":
        p = prof.load(args.file, registry.get) if args.file else prof.nominal(mod)
        params = prof.declared(registry.get(p.modality))
        print(p.summary(params))
        print("parameters:")
        for q in params:
            print(f"  {q.name:<16} {q.unit:<10} possible [{q.lo:g}, {q.hi:g}]"
                  + (f", per packet as header '{q.header}'" if q.header else "") + (f" -- {q.doc}" if q.doc else ""))
        bundles = _bundles_for(p.hash, p.modality, args.models_dir)
        print("bundles trained for it: " + (", ".join(bundles) if bundles else
                                              "none (models trained on the nominal instrument cover it only within "
                                              "their tolerance; `streamer train --modality "
                                              f"{p.modality} --instrument FILE`)"))
        return 0
    path = Path(args.file)
    if path.exists() and not args.force:
        raise ValueError(f"{path} exists (--force to overwrite)")
    params = {q.name: q for q in prof.declared(mod)}
    values = {}
    for item in args.set:
        key, sep, val = item.partition("=")
        if not sep or key not in params:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(params)}")
        values[key] = float(val)
    p = prof.nominal(mod, args.name or path.stem).with_values(values, "streamer profile new --set")
    p = prof.InstrumentProfile(p.modality, p.name, p.values, p.provenance, args.description)
    prof.parse(p.to_toml(), registry.get, str(path))  # the same checks as any file (ranges)
    p.save(path)
    print(p.summary(tuple(params.values())))
    print(f"wrote {path}")
    return 0
