"""``streamer keys``: create CurveZMQ key pairs for a sink bound on a network interface."""

from __future__ import annotations

import argparse

from ..pipeline.security import create_keys

HELP = "create CurveZMQ server/client key pairs (needed to bind a non-loopback interface)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="key directory (server.key[_secret], client.key[_secret], authorized/)")


def run(args: argparse.Namespace) -> int:
    d = create_keys(args.directory)
    print(f"keys in {d}: give server.key + client.key_secret + client.key to publishers/workers/monitors; "
          f"the sink accepts the public keys in {d / 'authorized'}")
    return 0
