"""``streamer`` command line: ``streamer VERB [--modality NAME] ...``.

Generic verbs are modules in :mod:`streamer.commands` (``HELP``, ``add_arguments(parser[, modality])``,
``run(args) -> int``), imported lazily so that ``streamer worker`` does not pay for Qt or training.
``simulate``, ``train``, ``evaluate`` and a modality's own extra verbs are the modality's
(:class:`streamer.core.modality.Commands`): ``--modality`` (default ``minflux``) picks whose options
are added, so put it anywhere on the line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .core import registry

#: generic sub-command -> module under streamer.commands
COMMANDS: dict[str, str] = {
    "modalities": "modalities",
    "simulate": "simulate",
    "demo": "demo",
    "run": "run",
    "publish": "publish",
    "sink": "sink",
    "worker": "worker",
    "monitor": "monitor",
    "results": "results",
    "reprocess": "reprocess",
    "bench": "bench",
    "compile": "compile",
    "keys": "keys",
    "profile": "profile",
}
#: verbs the modality implements entirely (its Commands object)
MODALITY_VERBS: dict[str, str] = {
    "train": "train, conformally calibrate and save the modality's model bundles (compiled per machine)",
    "calibrate": "fit an instrument profile from the user's own calibration data (beads, dark frames, ...)",
    "evaluate": "held-out accuracy / interval-coverage tables of the modality's predictors vs baselines and the physical floor",
}


def _modality_name(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a == "--modality" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--modality="):
            return a.split("=", 1)[1]
    return registry.DEFAULT_MODALITY


def _not_available(verb: str, name: str):
    def run(_args: argparse.Namespace) -> int:
        raise ValueError(f"modality {name!r} has no '{verb}' (installed: {', '.join(registry.names())})")
    return run


def build_parser(modality: str = registry.DEFAULT_MODALITY) -> argparse.ArgumentParser:
    mod = registry.get(modality)
    cmds = mod.commands
    parser = argparse.ArgumentParser(prog="streamer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        # argparse %-formats help strings ("90% interval" would break --help)
        p = sub.add_parser(name, help=help_text.replace("%", "%%"), description=help_text)
        p.add_argument("--modality", default=modality, choices=registry.names(),
                       help=f"the kind of acquisition (default {registry.DEFAULT_MODALITY}; `streamer modalities` lists them)")
        return p

    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"streamer.commands.{module_name}")
        p = add(name, module.HELP)
        if getattr(module, "MODALITY_AWARE", False):
            module.add_arguments(p, mod)
        else:
            module.add_arguments(p)
        p.set_defaults(_run=module.run)
    extra = dict(MODALITY_VERBS)
    extra.update(getattr(cmds, "verbs", {}) or {})
    for verb, help_text in extra.items():
        p = add(verb, help_text if verb not in MODALITY_VERBS else f"{help_text} ({mod.name})")
        adder = getattr(cmds, f"add_{verb}_arguments", None) if cmds else None
        if adder:
            adder(p)
        runner = getattr(cmds, verb, None) if cmds else None
        p.set_defaults(_run=runner or _not_available(verb, mod.name))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(_modality_name(argv))
    except ValueError as exc:  # unknown --modality
        print(f"streamer: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # bad input: a message, not a traceback
        print(f"streamer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as exc:  # e.g. a pipeline process that failed to start
        print(f"streamer {args.command}: failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
