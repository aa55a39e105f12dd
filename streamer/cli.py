"""``streamer`` command line: one sub-command per module in :mod:`streamer.commands`.

Sub-command modules are imported lazily so that ``streamer worker`` does not pay for Qt or
training imports. Each module provides ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: sub-command name -> module under streamer.commands
COMMANDS: dict[str, str] = {
    "simulate": "simulate",
    "estimate": "estimate",
    "demo": "demo",
    "compile": "compile",
    "publish": "publish",
    "worker": "worker",
    "sink": "sink",
    "run": "run",
    "keys": "keys",
    "monitor": "monitor",
    "convert": "convert",
    "train": "train",
    "evaluate": "evaluate",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"streamer.commands.{module_name}")
        # argparse %-formats help strings ("90% interval" would break --help)
        p = sub.add_parser(name, help=module.HELP.replace("%", "%%"), description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
