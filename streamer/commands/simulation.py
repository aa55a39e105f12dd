"""The simulation options and call every verb that simulates shares (simulate, demo, run, publish, bench)."""

from __future__ import annotations

import argparse
import inspect


def add_options(p: argparse.ArgumentParser, modality, grouped: bool = True) -> None:
    """The modality's simulator options (in their own group), and the modality for :func:`simulate`."""
    hook = getattr(modality.commands, "add_simulate_arguments", None)
    if hook:
        hook(p.add_argument_group(f"simulation ({modality.name})") if grouped else p)
    p.set_defaults(_modality_obj=modality)


def simulate(args: argparse.Namespace, what: str = "nothing to simulate", demo: bool = False):
    """The modality's recording for ``args`` (``demo``: the simulator's demo-sized defaults)."""
    cmds = args._modality_obj.commands
    fn = getattr(cmds, "simulate", None)
    if fn is None:
        raise ValueError(f"modality {args._modality_obj.name!r} has no simulator: {what}")
    if not hasattr(args, "simulate"):
        args.simulate = None
    return fn(args, demo=True) if demo and "demo" in inspect.signature(fn).parameters else fn(args)


def recording(modality, options: list[str] = ()):
    """The modality's simulated recording for command-line style ``options`` (benches, tests)."""
    p = argparse.ArgumentParser(prog=f"simulate --modality {modality.name}")
    modality.commands.add_simulate_arguments(p)
    args = p.parse_args(list(options))
    args.simulate = None
    return modality.commands.simulate(args)


def describe(args: argparse.Namespace, rec) -> str:
    cmds = args._modality_obj.commands
    return cmds.describe(rec) if hasattr(cmds, "describe") else f"{len(rec):,} {rec.kind} items"
